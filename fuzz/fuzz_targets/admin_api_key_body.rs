//! `POST /api/v1/api-keys` and `PUT /api/v1/api-keys/{id}` bodies: with an even first input byte
//! the rest creates a client key, with an odd one it updates a stored key with every limit set.
//!
//! Property: a key the API accepted, sent back as the API shows it, is unchanged (numbers
//! compared as JSON, within a unit in the last place).
#![no_main]

use libfuzzer_sys::fuzz_target;
use octopus::api::api_keys::api_key_json;
use octopus::fuzz_entry::{api_key_create, api_key_update};
use octopus::store::entities::ApiKey;

fn stored_api_key() -> ApiKey {
    ApiKey {
        id: 5,
        name: "stored".to_string(),
        key_hash: "0".repeat(64),
        key_prefix: "sk-octopus-AbCd".to_string(),
        enabled: true,
        expires_at: Some(1_900_000_000),
        max_cost: Some(12.5),
        allowed_models: vec!["group-a".to_string()],
        rpm: 60,
        tpm: 100_000,
        created_at: 1,
        updated_at: 2,
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, body @ ..] = data else { return };
    let api_key = if mode % 2 == 0 {
        let Ok(api_key) = api_key_create(body) else {
            return;
        };
        api_key
    } else {
        let mut api_key = stored_api_key();
        if api_key_update(&mut api_key, body).is_err() {
            return;
        }
        api_key
    };
    let shown = api_key_json(&api_key);
    let mut again = api_key.clone();
    api_key_update(&mut again, shown.to_string().as_bytes())
        .expect("a key as the API shows it is accepted back");
    assert!(
        octopus_fuzz::json_close(&api_key_json(&again), &shown),
        "sending a key back as shown changed it"
    );
});
