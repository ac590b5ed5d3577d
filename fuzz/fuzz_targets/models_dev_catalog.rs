//! The models.dev price catalogue (downloaded by the price sync) and the compact snapshot built
//! into the binary: with an even first input byte the rest is read as `api.json`, with an odd one
//! as a snapshot. Prices found are looked up for every channel type and turned into costs for
//! extreme token counts. Nothing may panic, and a cost is never negative.
#![no_main]

use libfuzzer_sys::fuzz_target;
use octopus::protocol::usage::Usage;
use octopus::stats::catalog::{Catalog, normalise_model_id};
use octopus::stats::pricing::cost_micros;
use octopus::store::entities::ChannelType;

/// Model names that reach the catalogue's lookup steps (exact, per provider, normalised).
const MODELS: [&str; 5] = [
    "gpt-4o",
    "claude-sonnet-4-5-20250929",
    "models/gemini-2.5-flash",
    "openai/o3@2025",
    "",
];

fuzz_target!(|data: &[u8]| {
    let [mode, document @ ..] = data else { return };
    let parsed = if mode % 2 == 0 {
        Catalog::parse(document)
    } else {
        Catalog::parse_snapshot(document)
    };
    let _ = normalise_model_id(&String::from_utf8_lossy(document));
    let Ok(catalog) = parsed else { return };
    let usages = [
        Usage {
            input_tokens: 1000,
            output_tokens: 500,
            cached_tokens: 200,
            cache_write_tokens: 100,
            reasoning_tokens: 0,
        },
        Usage {
            input_tokens: u64::MAX,
            output_tokens: u64::MAX,
            cached_tokens: u64::MAX,
            cache_write_tokens: u64::MAX,
            reasoning_tokens: u64::MAX,
        },
        Usage {
            input_tokens: 0,
            output_tokens: 0,
            cached_tokens: 7,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
        },
    ];
    for channel_type in ChannelType::ALL.iter().copied().map(Some).chain([None]) {
        for model in MODELS {
            let Some(price) = catalog.lookup(channel_type, model) else {
                continue;
            };
            for usage in &usages {
                assert!(cost_micros(usage, &price) >= 0, "a negative cost");
            }
        }
    }
});
