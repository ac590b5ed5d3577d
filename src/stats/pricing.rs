//! Prices and costs: the three-tier price lookup and the cost of one request's usage.
//!
//! Pure: no IO. Prices are USD per 1M tokens, so a token count times a price is micro-dollars,
//! which is the integer unit every counter stores.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::protocol::usage::Usage;
use crate::stats::catalog::Catalog;
use crate::store::entities::{ChannelType, ModelPrice};

/// A price in USD per 1M tokens. A cache price of 0 means "not set" and falls back to `input`:
/// no provider serves cache reads or writes for free, and models.dev leaves them out for models
/// without caching.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    pub cache_read: f64,
    pub cache_write: f64,
}

/// Where an effective price came from, in priority order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriceSource {
    /// A price set for this (channel, model).
    Channel,
    /// A price set for the model on every channel.
    Default,
    /// The models.dev catalogue (synced, or the snapshot compiled in).
    ModelsDev,
    /// No price anywhere: the request costs 0 and the model is listed as unpriced.
    Unpriced,
}

impl PriceSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PriceSource::Channel => "channel",
            PriceSource::Default => "default",
            PriceSource::ModelsDev => "models.dev",
            PriceSource::Unpriced => "unpriced",
        }
    }
}

impl From<&ModelPrice> for Price {
    fn from(row: &ModelPrice) -> Price {
        Price { input: row.input, output: row.output, cache_read: row.cache_read, cache_write: row.cache_write }
    }
}

/// The cost of `usage` at `price`, in micro-dollars, never negative.
///
/// `usage.input_tokens` holds every prompt token (cache reads and writes included, see
/// `protocol::usage`), so the non-cached part is what is left after taking both out; when an
/// upstream reports more cached tokens than prompt tokens that part is 0, not negative.
pub fn cost_micros(usage: &Usage, price: &Price) -> i64 {
    let cache_read_price = if price.cache_read > 0.0 { price.cache_read } else { price.input };
    let cache_write_price = if price.cache_write > 0.0 { price.cache_write } else { price.input };
    let non_cached = usage.input_tokens.saturating_sub(usage.cached_tokens).saturating_sub(usage.cache_write_tokens);
    let micros = non_cached as f64 * price.input.max(0.0)
        + usage.cached_tokens as f64 * cache_read_price.max(0.0)
        + usage.cache_write_tokens as f64 * cache_write_price.max(0.0)
        + usage.output_tokens as f64 * price.output.max(0.0);
    if micros.is_finite() && micros > 0.0 { micros.round().min(i64::MAX as f64) as i64 } else { 0 }
}

/// Micro-dollars as USD for the API.
pub fn micros_to_usd(micros: i64) -> f64 {
    micros as f64 / 1_000_000.0
}

/// Everything needed to price a request: the admin's prices and the catalogue. Rebuilt whole
/// whenever prices, channels or the catalogue change.
#[derive(Default)]
pub struct PriceBook {
    /// By channel, then model, so a lookup borrows the model name instead of copying it.
    channel_prices: HashMap<i64, HashMap<String, Price>>,
    default_prices: HashMap<String, Price>,
    channel_types: HashMap<i64, ChannelType>,
    /// `None`: the compiled-in snapshot (`Catalog::builtin`), parsed at its first lookup.
    catalog: Option<Arc<Catalog>>,
    /// Catalogue answers already found: a catalogue lookup normalises the model id and tries
    /// several providers, the costliest step of counting a request, and the same few (channel
    /// type, model) pairs come back all day. A book is rebuilt whenever prices change, so this
    /// never outlives what it remembers.
    catalog_answers: Mutex<HashMap<Option<ChannelType>, CatalogAnswers>>,
}

/// The catalogue's answer per model name, for one channel type.
type CatalogAnswers = HashMap<String, Option<Price>>;

/// Past this many remembered catalogue answers the memo starts over, so a client sending ever
/// new model names cannot grow it without bound.
const MAX_CATALOG_ANSWERS: usize = 4_096;

impl PriceBook {
    /// The book of the admin's price rows, with `catalog` (`None`: the compiled-in snapshot).
    pub fn new(rows: &[ModelPrice], channel_types: HashMap<i64, ChannelType>, catalog: Option<Arc<Catalog>>) -> PriceBook {
        let mut book = PriceBook { channel_types, catalog, ..PriceBook::default() };
        for row in rows {
            match row.channel_id {
                Some(channel_id) => book.channel_prices.entry(channel_id).or_default().insert(row.model.clone(), Price::from(row)),
                None => book.default_prices.insert(row.model.clone(), Price::from(row)),
            };
        }
        book
    }

    /// The price of `model` (the upstream model name) on `channel_id`: the channel's own price,
    /// else the default price, else the catalogue's for the channel's provider.
    pub fn effective(&self, channel_id: Option<i64>, model: &str) -> (Price, PriceSource) {
        if let Some(price) = channel_id.and_then(|channel_id| self.channel_prices.get(&channel_id)).and_then(|models| models.get(model)) {
            return (*price, PriceSource::Channel);
        }
        if let Some(price) = self.default_prices.get(model) {
            return (*price, PriceSource::Default);
        }
        let channel_type = channel_id.and_then(|channel_id| self.channel_types.get(&channel_id).copied());
        match self.catalog_lookup(channel_type, model) {
            Some(price) => (price, PriceSource::ModelsDev),
            None => (Price::default(), PriceSource::Unpriced),
        }
    }

    fn catalog_lookup(&self, channel_type: Option<ChannelType>, model: &str) -> Option<Price> {
        let mut answers = self.catalog_answers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let answers = answers.entry(channel_type).or_default();
        if let Some(answer) = answers.get(model) {
            return *answer;
        }
        let answer = self.catalog().lookup(channel_type, model);
        if answers.len() >= MAX_CATALOG_ANSWERS {
            answers.clear();
        }
        answers.insert(model.to_string(), answer);
        answer
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.clone().unwrap_or_else(Catalog::builtin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, cached: u64, cache_write: u64, output: u64) -> Usage {
        Usage { input_tokens: input, output_tokens: output, cached_tokens: cached, cache_write_tokens: cache_write, reasoning_tokens: 0 }
    }

    const SONNET: Price = Price { input: 3.0, output: 15.0, cache_read: 0.3, cache_write: 3.75 };

    /// Hand-computed cases: tokens x USD per 1M tokens = micro-dollars.
    #[test]
    fn costs_match_hand_computed_cases() {
        let cases: [(&str, Usage, Price, i64); 7] = [
            ("plain input and output", usage(1_000, 0, 0, 500), SONNET, 1_000 * 3 + 500 * 15),
            ("cache reads at cache_read", usage(1_000, 800, 0, 0), SONNET, 200 * 3 + (800.0 * 0.3) as i64),
            ("cache writes at cache_write", usage(1_000, 0, 400, 0), SONNET, 600 * 3 + 400 * 375 / 100),
            ("cache prices fall back to input", usage(1_000, 800, 100, 10), Price { input: 2.0, output: 8.0, ..Price::default() }, 1_000 * 2 + 10 * 8),
            ("cached > prompt never goes negative", usage(100, 500, 0, 0), SONNET, (500.0 * 0.3) as i64),
            ("unpriced costs nothing", usage(1_000_000, 0, 0, 1_000_000), Price::default(), 0),
            ("one million tokens of output at $15", usage(0, 0, 0, 1_000_000), SONNET, 15_000_000),
        ];
        for (name, usage, price, expected) in cases {
            assert_eq!(cost_micros(&usage, &price), expected, "{name}");
        }
    }

    #[test]
    fn negative_prices_count_as_zero() {
        let price = Price { input: -5.0, output: -1.0, cache_read: 0.0, cache_write: 0.0 };
        assert_eq!(cost_micros(&usage(10, 0, 0, 10), &price), 0);
    }

    #[test]
    fn channel_price_beats_default_beats_catalogue() {
        let rows = vec![
            ModelPrice { id: 1, model: "m".to_string(), channel_id: Some(7), input: 1.0, ..ModelPrice::default() },
            ModelPrice { id: 2, model: "m".to_string(), channel_id: None, input: 2.0, ..ModelPrice::default() },
        ];
        let book = PriceBook::new(&rows, HashMap::new(), Some(Arc::new(Catalog::default())));
        assert_eq!(book.effective(Some(7), "m"), (Price { input: 1.0, ..Price::default() }, PriceSource::Channel));
        assert_eq!(book.effective(Some(8), "m"), (Price { input: 2.0, ..Price::default() }, PriceSource::Default));
        assert_eq!(book.effective(Some(8), "other").1, PriceSource::Unpriced);
    }
}
