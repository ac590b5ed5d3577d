//! The models.dev price catalogue: parsing `api.json`, the compiled-in snapshot, and the rule that
//! maps a (channel type, upstream model) to a catalogue entry.
//!
//! Pure: no IO. The sync job (`sync::price_sync`) fetches the document and hands it here.
//!
//! # What is kept
//!
//! `api.json` is `{provider_id: {id, name, models: {model_id: {id, cost: {input, output,
//! cache_read?, cache_write?, ...}, ...}}}}`. Only models with a `cost` holding numeric `input`
//! and `output` are kept; prices are USD per 1M tokens. Context tiers (`cost.tiers`,
//! `cost.context_over_200k`), audio prices and `experimental` modes are ignored: a request is
//! priced at the base tier. A missing cache price is stored as 0, which `stats::pricing` reads as
//! "charge cache tokens at `input`".
//!
//! # The mapping rule
//!
//! `Catalog::lookup(channel_type, model)` tries, in order, and the first hit wins:
//!
//! 1. the channel type's own provider (`provider_of`: `openai_chat` and `openai_responses` ->
//!    `openai`, `anthropic` -> `anthropic`, `gemini` and `antigravity` -> `google`) with the
//!    exact model id;
//! 2. any provider listing the exact id, the most preferred one first: the first-party providers
//!    in the order of `PREFERRED_PROVIDERS`, then every other provider alphabetically;
//! 3. steps 1 and 2 again with both sides normalised by `normalise_model_id`: lower-cased,
//!    `models/` and any `vendor/` prefix removed, and date or version suffixes removed
//!    (`-20250514`, `-2024-08-06`, `@20240620`, `-latest`). When several catalogue ids of one
//!    provider normalise alike (`claude-3-5-sonnet-20240620` and `-20241022`), the id that is
//!    already normal wins, else the greatest id (the newest date).
//!
//! All indexes are built once at parse time, so a lookup is at most four hash probes and the
//! answer never depends on hash order.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value};

use crate::stats::pricing::Price;
use crate::store::entities::ChannelType;

/// First-party providers, most preferred first, for a model id several providers list. Every
/// provider not named here comes after these, in alphabetical order.
pub const PREFERRED_PROVIDERS: &[&str] = &[
    "openai",
    "anthropic",
    "google",
    "deepseek",
    "xai",
    "mistral",
    "alibaba",
    "zhipuai",
    "moonshotai",
    "minimax",
    "cohere",
    "perplexity",
    "zai",
    "xiaomi",
    "llama",
];

/// The snapshot written by `scripts/price-snapshot`, compiled in.
const SNAPSHOT: &str = include_str!("models_dev_snapshot.json");

/// The snapshot's format tag; `scripts/price-snapshot` writes the same.
const SNAPSHOT_FORMAT: &str = "octopus-models-dev-snapshot-1";

/// The compiled-in snapshot, parsed (`Catalog::builtin`).
static BUILTIN_CATALOG: OnceLock<Arc<Catalog>> = OnceLock::new();

/// Prices by provider id, then by model id, as models.dev lists them, plus the indexes of the
/// mapping rule.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Catalog {
    providers: HashMap<String, HashMap<String, Price>>,
    /// Exact model id -> the price of the most preferred provider listing it.
    by_exact_id: HashMap<String, Price>,
    /// Provider -> normalised model id -> price.
    normalised_by_provider: HashMap<String, HashMap<String, Price>>,
    /// Normalised model id -> the price of the most preferred provider listing it.
    by_normalised_id: HashMap<String, Price>,
}

impl Catalog {
    /// Parses a models.dev `api.json` document. Providers or models of an unexpected shape are
    /// skipped (the feed grows new fields and modes); a document that is not a JSON object, or
    /// holds no priced model at all, is an error.
    pub fn parse(document: &[u8]) -> Result<Catalog, String> {
        let value: Value = serde_json::from_slice(document).map_err(|error| format!("the models.dev catalogue is not valid JSON: {error}"))?;
        let Value::Object(providers) = value else {
            return Err("the models.dev catalogue must be a JSON object of providers".to_string());
        };
        let mut entries = Vec::new();
        for (provider_id, provider) in &providers {
            let Some(models) = provider.get("models").and_then(Value::as_object) else { continue };
            for (model_id, model) in models {
                if let Some(price) = model.get("cost").and_then(Value::as_object).and_then(price_of_cost) {
                    entries.push((provider_id.clone(), model_id.clone(), price));
                }
            }
        }
        if entries.is_empty() {
            return Err(format!("the models.dev catalogue lists no priced model ({} providers read)", providers.len()));
        }
        Ok(Catalog::from_entries(entries))
    }

    /// Parses the compact snapshot `scripts/price-snapshot` writes:
    /// `{"format", "providers": {provider: {model: [input, output, cache_read?, cache_write?]}}}`.
    /// Read into borrowed types rather than a `Value` tree: this runs at every start.
    pub fn parse_snapshot(document: &[u8]) -> Result<Catalog, String> {
        #[derive(serde::Deserialize)]
        struct Snapshot<'a> {
            #[serde(borrow)]
            format: Cow<'a, str>,
            #[serde(borrow)]
            providers: HashMap<Cow<'a, str>, HashMap<Cow<'a, str>, Vec<f64>>>,
        }
        let snapshot: Snapshot =
            serde_json::from_slice(document).map_err(|error| format!("the price snapshot is not readable: {error}"))?;
        if snapshot.format != SNAPSHOT_FORMAT {
            return Err(format!("the price snapshot is not in the {SNAPSHOT_FORMAT} format"));
        }
        let mut entries = Vec::new();
        for (provider_id, models) in snapshot.providers {
            for (model_id, numbers) in models {
                if numbers.len() < 2 || numbers.len() > 4 || numbers.iter().any(|number| !number.is_finite() || *number < 0.0) {
                    return Err(format!("snapshot price of {provider_id}/{model_id} must be 2 to 4 numbers of 0 or more"));
                }
                let price = Price {
                    input: numbers[0],
                    output: numbers[1],
                    cache_read: numbers.get(2).copied().unwrap_or(0.0),
                    cache_write: numbers.get(3).copied().unwrap_or(0.0),
                };
                entries.push((provider_id.to_string(), model_id.into_owned(), price));
            }
        }
        if entries.is_empty() {
            return Err("the price snapshot lists no priced model".to_string());
        }
        Ok(Catalog::from_entries(entries))
    }

    /// The snapshot compiled into the binary, so prices work offline from the first start. It is
    /// parsed once per process and shared; a test keeps it parseable, and should it ever fail
    /// the gateway starts with an empty catalogue (and says so) rather than not at all.
    pub fn builtin() -> Arc<Catalog> {
        BUILTIN_CATALOG
            .get_or_init(|| {
                Arc::new(Catalog::parse_snapshot(SNAPSHOT.as_bytes()).unwrap_or_else(|error| {
                    log::error!("the compiled-in price snapshot is unusable, starting without it: {error}");
                    Catalog::default()
                }))
            })
            .clone()
    }

    /// Builds the catalogue and its indexes from (provider, model id, price) entries.
    fn from_entries(entries: Vec<(String, String, Price)>) -> Catalog {
        struct Entry {
            provider_rank: usize,
            provider: String,
            model: String,
            normalised: String,
            price: Price,
        }
        let mut entries: Vec<Entry> = entries
            .into_iter()
            .map(|(provider, model, price)| Entry { provider_rank: provider_rank(&provider), normalised: normalise_model_id(&model), provider, model, price })
            .collect();
        // Insertion order decides every tie: the preferred provider first, then within one
        // provider the id that is already normal, then the greatest id (the newest date).
        entries.sort_unstable_by(|left, right| {
            (left.provider_rank, &left.provider, left.normalised != left.model, Reverse(&left.model))
                .cmp(&(right.provider_rank, &right.provider, right.normalised != right.model, Reverse(&right.model)))
        });
        let mut catalog = Catalog::default();
        // Every index keeps the first price it sees for a key, so a key is copied only when it is
        // new (the catalogue is built at every start and after every sync).
        fn keep_first(index: &mut HashMap<String, Price>, key: &str, price: Price) {
            if !index.contains_key(key) {
                index.insert(key.to_string(), price);
            }
        }
        for entry in entries {
            keep_first(&mut catalog.by_exact_id, &entry.model, entry.price);
            keep_first(&mut catalog.by_normalised_id, &entry.normalised, entry.price);
            if !catalog.providers.contains_key(&entry.provider) {
                catalog.providers.insert(entry.provider.clone(), HashMap::new());
                catalog.normalised_by_provider.insert(entry.provider.clone(), HashMap::new());
            }
            if let Some(normalised) = catalog.normalised_by_provider.get_mut(&entry.provider)
                && !normalised.contains_key(&entry.normalised)
            {
                normalised.insert(entry.normalised, entry.price);
            }
            if let Some(models) = catalog.providers.get_mut(&entry.provider) {
                models.insert(entry.model, entry.price);
            }
        }
        catalog
    }

    /// The price of `model` for a channel of `channel_type` (None: no channel, or one we no
    /// longer know), by the rule in the module documentation.
    pub fn lookup(&self, channel_type: Option<ChannelType>, model: &str) -> Option<Price> {
        let provider = channel_type.map(provider_of);
        if let Some(price) = provider.and_then(|provider| self.providers.get(provider)).and_then(|models| models.get(model)) {
            return Some(*price);
        }
        if let Some(price) = self.by_exact_id.get(model) {
            return Some(*price);
        }
        let normalised = normalise_model_id(model);
        if let Some(price) = provider.and_then(|provider| self.normalised_by_provider.get(provider)).and_then(|models| models.get(&normalised)) {
            return Some(*price);
        }
        self.by_normalised_id.get(&normalised).copied()
    }

    /// How many (provider, model) prices the catalogue holds.
    pub fn len(&self) -> usize {
        self.providers.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The providers the catalogue holds prices for.
    pub fn provider_count(&self) -> usize {
        self.providers.len()
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

/// A model id in the form both sides of the lookup's third step are compared in: lower case,
/// without a `models/` or `vendor/` prefix, and without date or version suffixes.
pub fn normalise_model_id(model: &str) -> String {
    let mut id = model.trim().to_ascii_lowercase();
    // `models/gemini-2.5-flash` (Gemini) and `openai/gpt-4o` (aggregators) name the same model as
    // the last path segment.
    if let Some((_, last)) = id.rsplit_once('/') {
        id = last.to_string();
    }
    // Vertex AI writes versions as `claude-3-5-sonnet@20240620`.
    if let Some((base, _)) = id.split_once('@') {
        id = base.to_string();
    }
    loop {
        let shorter = strip_version_suffix(&id);
        if shorter.len() == id.len() || shorter.is_empty() {
            return id;
        }
        id = shorter.to_string();
    }
}

/// Removes one trailing `-latest`, `-YYYYMMDD` or `-YYYY-MM-DD`, if there is one.
fn strip_version_suffix(id: &str) -> &str {
    if let Some(base) = id.strip_suffix("-latest") {
        return base;
    }
    let bytes = id.as_bytes();
    let is_digits = |range: std::ops::Range<usize>| bytes[range].iter().all(u8::is_ascii_digit);
    let length = bytes.len();
    // `-20250514`: nine bytes, a dash and eight digits that start like a year.
    if length > 9 && bytes[length - 9] == b'-' && is_digits(length - 8..length) && bytes[length - 8] == b'2' {
        return &id[..length - 9];
    }
    // `-2024-08-06`: eleven bytes.
    if length > 11
        && bytes[length - 11] == b'-'
        && bytes[length - 6] == b'-'
        && bytes[length - 3] == b'-'
        && is_digits(length - 10..length - 6)
        && is_digits(length - 5..length - 3)
        && is_digits(length - 2..length)
        && bytes[length - 10] == b'2'
    {
        return &id[..length - 11];
    }
    id
}

/// Where a provider stands in the preference order of the lookup's second step.
fn provider_rank(provider: &str) -> usize {
    PREFERRED_PROVIDERS.iter().position(|preferred| *preferred == provider).unwrap_or(PREFERRED_PROVIDERS.len())
}

/// The base-tier price of a models.dev `cost` object, when it has a usable input and output.
fn price_of_cost(cost: &Map<String, Value>) -> Option<Price> {
    let number = |field: &str| cost.get(field).and_then(Value::as_f64).filter(|value| value.is_finite() && *value >= 0.0);
    Some(Price {
        input: number("input")?,
        output: number("output")?,
        cache_read: number("cache_read").unwrap_or(0.0),
        cache_write: number("cache_write").unwrap_or(0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        // A worktree beside `shared/` or a checkout one level further down both work.
        let candidates = [manifest.join("../shared/fixtures/models-dev").join(name), manifest.join("../../shared/fixtures/models-dev").join(name)];
        let path = candidates.iter().find(|path| path.is_file()).unwrap_or(&candidates[0]);
        std::fs::read(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
    }

    fn small() -> Catalog {
        Catalog::parse(&fixture("api-small.json")).expect("the small fixture parses")
    }

    const SONNET_4_5: Price = Price { input: 3.0, output: 15.0, cache_read: 0.3, cache_write: 3.75 };

    #[test]
    fn anthropic_channel_finds_its_own_model() {
        assert_eq!(small().lookup(Some(ChannelType::Anthropic), "claude-sonnet-4-5"), Some(SONNET_4_5));
    }

    #[test]
    fn dated_and_vendor_prefixed_ids_normalise() {
        let catalog = small();
        assert_eq!(catalog.lookup(Some(ChannelType::Anthropic), "claude-sonnet-4-5-20250929"), Some(SONNET_4_5));
        assert_eq!(catalog.lookup(Some(ChannelType::OpenaiChat), "anthropic/claude-sonnet-4-5"), Some(SONNET_4_5));
        assert_eq!(catalog.lookup(None, "Claude-Sonnet-4-5@20250929"), Some(SONNET_4_5));
        let gpt_4o = catalog.lookup(None, "gpt-4o").expect("gpt-4o is priced");
        assert_eq!(catalog.lookup(Some(ChannelType::OpenaiChat), "gpt-4o-2024-08-06"), Some(gpt_4o));
        assert_eq!(catalog.lookup(Some(ChannelType::OpenaiChat), "openai/gpt-4o"), Some(gpt_4o));
    }

    #[test]
    fn gemini_model_names_with_the_models_prefix_are_found() {
        let catalog = small();
        let expected = Price { input: 0.3, output: 2.5, cache_read: 0.03, cache_write: 0.0 };
        assert_eq!(catalog.lookup(Some(ChannelType::Gemini), "models/gemini-2.5-flash"), Some(expected));
        assert_eq!(catalog.lookup(Some(ChannelType::Antigravity), "gemini-2.5-flash"), Some(expected));
    }

    #[test]
    fn a_model_listed_without_a_cost_is_not_priced() {
        let catalog = small();
        assert_eq!(catalog.lookup(Some(ChannelType::OpenaiChat), "chatgpt-image-latest"), None);
        assert_eq!(catalog.lookup(None, "no-such-model"), None);
    }

    #[test]
    fn another_providers_model_is_found_from_any_channel() {
        let catalog = small();
        let deepseek = catalog.lookup(None, "deepseek-chat").expect("deepseek-chat is priced");
        assert_eq!(catalog.lookup(Some(ChannelType::Anthropic), "deepseek-chat"), Some(deepseek));
        assert_eq!(deepseek.input, 0.14);
    }

    #[test]
    fn the_full_catalogue_parses_and_prefers_first_party_providers() {
        let catalog = Catalog::parse(&fixture("api.json")).expect("the full fixture parses");
        assert!(catalog.len() > 4_000, "{} prices", catalog.len());
        assert_eq!(catalog.lookup(None, "claude-sonnet-4-5"), Some(SONNET_4_5));
        // Aggregators list `anthropic/claude-sonnet-4.5` and friends at their own prices; an
        // Anthropic channel still gets Anthropic's.
        assert_eq!(catalog.lookup(Some(ChannelType::Anthropic), "claude-sonnet-4-5-20250929"), Some(SONNET_4_5));
        assert_eq!(catalog, Catalog::parse(&fixture("api.json")).unwrap(), "parsing is deterministic");
    }

    #[test]
    fn bad_documents_get_a_clear_error() {
        assert!(Catalog::parse(b"not json").unwrap_err().contains("not valid JSON"));
        assert!(Catalog::parse(b"[1, 2]").unwrap_err().contains("JSON object of providers"));
        assert!(Catalog::parse(b"{}").unwrap_err().contains("no priced model"));
        let without_costs = br#"{"p": {"id": "p", "models": {"m": {"id": "m"}, "n": {"cost": {"input": "free"}}}}}"#;
        assert!(Catalog::parse(without_costs).unwrap_err().contains("no priced model"));
    }

    #[test]
    fn tiers_and_experimental_modes_are_ignored() {
        let document = br#"{"x": {"models": {"m": {"cost": {"input": 1, "output": 2, "tiers": [{"input": 9}],
            "context_over_200k": {"input": 9, "output": 9}}, "experimental": {"modes": {"fast": {"cost": {"input": 5}}}}}}}}"#;
        let catalog = Catalog::parse(document).unwrap();
        assert_eq!(catalog.lookup(None, "m"), Some(Price { input: 1.0, output: 2.0, ..Price::default() }));
    }

    #[test]
    fn normalisation_strips_prefixes_and_dates_only() {
        for (raw, expected) in [
            ("models/gemini-2.5-flash", "gemini-2.5-flash"),
            ("openai/GPT-4o", "gpt-4o"),
            ("claude-3-5-sonnet-20240620", "claude-3-5-sonnet"),
            ("gpt-4o-2024-08-06", "gpt-4o"),
            ("claude-3-5-sonnet@20240620", "claude-3-5-sonnet"),
            ("claude-3-5-sonnet-latest", "claude-3-5-sonnet"),
            ("qwen3-235b-a22b-instruct-2507", "qwen3-235b-a22b-instruct-2507"),
            ("gpt-4-0613", "gpt-4-0613"),
        ] {
            assert_eq!(normalise_model_id(raw), expected, "{raw}");
        }
    }

    #[test]
    fn the_compiled_in_snapshot_prices_well_known_models() {
        let catalog = Catalog::parse_snapshot(SNAPSHOT.as_bytes()).expect("the snapshot parses");
        assert!(catalog.len() > 500, "{} prices", catalog.len());
        assert!(SNAPSHOT.len() <= 100 * 1024, "the snapshot is {} bytes", SNAPSHOT.len());
        assert_eq!(catalog.lookup(Some(ChannelType::Anthropic), "claude-sonnet-4-5-20250929"), Some(SONNET_4_5));
        assert_eq!(catalog.lookup(Some(ChannelType::OpenaiChat), "gpt-4o").map(|price| price.input), Some(2.5));
        assert!(catalog.lookup(Some(ChannelType::Gemini), "models/gemini-2.5-flash").is_some());
        assert!(catalog.lookup(None, "deepseek-chat").is_some());
        assert_eq!(*Catalog::builtin(), catalog);
        let full = Catalog::parse(&fixture("api.json")).unwrap();
        for model in ["gpt-4o", "claude-sonnet-4-5", "gemini-2.5-pro", "grok-4.3", "codestral-latest", "deepseek-reasoner"] {
            assert_eq!(catalog.lookup(None, model), full.lookup(None, model), "{model}");
        }
    }
}
