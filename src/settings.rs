//! Runtime settings stored in the database (`GET|PUT /api/v1/settings`): defaults, validation,
//! loading, and the shared cell every thread reads the current values from.
//!
//! Unlike `config.rs` (a file read once at start), these change while the gateway runs: a PUT
//! validates every value, stores it, and swaps the cell, and the readers (stats writer,
//! scheduler, metrics endpoint) pick the new values up on their next look.

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::store::{Store, StoreResult};

/// Every runtime setting with its current value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// How often the stats writer flushes counters to the database.
    pub stats_save_interval_seconds: u64,
    /// Request logs older than this are pruned.
    pub log_retention_days: u64,
    /// At most this many request logs are kept (the oldest go first); 0 writes no logs at all.
    pub log_max_rows: u64,
    /// Whether request and response bodies are kept in the logs.
    pub log_bodies: bool,
    /// Each kept body is cut to this many bytes.
    pub log_body_max_bytes: u64,
    /// How often prices are synced from models.dev; 0 = only at start and on demand.
    pub price_sync_interval_hours: u64,
    /// How often channels with `auto_sync` refresh their model lists; 0 = only on demand.
    pub model_sync_interval_hours: u64,
    /// Where the models.dev catalogue is fetched from (`{models_dev_url}/api.json`).
    pub models_dev_url: String,
    /// Whether `GET /metrics` answers (404 when off).
    pub metrics_enabled: bool,
    /// When not empty, `/metrics` requires `Authorization: Bearer <metrics_token>`.
    pub metrics_token: String,
    /// Stored OpenAI Responses (for `previous_response_id`) are kept this many hours.
    pub response_store_hours: u64,
    /// Web origins whose pages may call the relay endpoints from a browser (`https://chat.example`,
    /// comma separated, `*` for any); empty refuses every cross-origin call. See `http::cors`.
    pub cors_allowed_origins: String,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            stats_save_interval_seconds: 60,
            log_retention_days: 30,
            log_max_rows: 100_000,
            log_bodies: false,
            log_body_max_bytes: 65_536,
            price_sync_interval_hours: 24,
            model_sync_interval_hours: 24,
            models_dev_url: "https://models.dev".to_string(),
            metrics_enabled: false,
            metrics_token: String::new(),
            response_store_hours: 24,
            cors_allowed_origins: String::new(),
        }
    }
}

/// The names of every setting, in the order the API shows them.
pub const SETTING_NAMES: [&str; 12] = [
    "stats_save_interval_seconds",
    "log_retention_days",
    "log_max_rows",
    "log_bodies",
    "log_body_max_bytes",
    "price_sync_interval_hours",
    "model_sync_interval_hours",
    "models_dev_url",
    "metrics_enabled",
    "metrics_token",
    "response_store_hours",
    "cors_allowed_origins",
];

/// A setting name prefix in the `settings` table, so other keys stored there never collide.
const STORAGE_PREFIX: &str = "setting.";

impl Settings {
    /// Applies a JSON object of changes, validating every field; on error nothing is changed
    /// and the message names the field and the rule.
    pub fn with_changes(&self, changes: &Map<String, Value>) -> Result<Settings, String> {
        let mut updated = self.clone();
        for (name, value) in changes {
            updated.apply_one(name, value)?;
        }
        Ok(updated)
    }

    fn apply_one(&mut self, name: &str, value: &Value) -> Result<(), String> {
        match name {
            "stats_save_interval_seconds" => self.stats_save_interval_seconds = whole_number(name, value, 1, 86_400)?,
            "log_retention_days" => self.log_retention_days = whole_number(name, value, 1, 36_500)?,
            "log_max_rows" => self.log_max_rows = whole_number(name, value, 0, 1_000_000_000)?,
            "log_bodies" => self.log_bodies = flag(name, value)?,
            "log_body_max_bytes" => self.log_body_max_bytes = whole_number(name, value, 0, 16 * 1024 * 1024)?,
            "price_sync_interval_hours" => self.price_sync_interval_hours = whole_number(name, value, 0, 8_760)?,
            "model_sync_interval_hours" => self.model_sync_interval_hours = whole_number(name, value, 0, 8_760)?,
            "models_dev_url" => {
                let url = text(name, value)?.trim().trim_end_matches('/').to_string();
                // A URL holds no whitespace. Accepted, it would only fail at the next price sync,
                // and taking off a trailing slash could bare a space that the next read (a reload,
                // or the panel saving the settings it was shown) trims, so the value would drift.
                let is_http = url.starts_with("http://") || url.starts_with("https://");
                if !is_http || url.len() < 10 || url.contains(char::is_whitespace) {
                    return Err(format!("{name} must be an http:// or https:// URL, got {url:?}"));
                }
                self.models_dev_url = url;
            }
            "metrics_enabled" => self.metrics_enabled = flag(name, value)?,
            "metrics_token" => self.metrics_token = text(name, value)?,
            // At least an hour so a chain of turns survives a pause; at most 30 days, the
            // longest OpenAI keeps a response itself.
            "response_store_hours" => self.response_store_hours = whole_number(name, value, 1, 720)?,
            "cors_allowed_origins" => {
                self.cors_allowed_origins = crate::http::cors::normalize_allowed_origins(&text(name, value)?)
                    .map_err(|problem| format!("{name}: {problem}"))?;
            }
            other => return Err(format!("unknown setting {other:?} (known: {})", SETTING_NAMES.join(", "))),
        }
        Ok(())
    }

    /// The settings as the API shows them.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Reads the stored settings over the defaults. A stored value that no longer validates (an
    /// older or hand-edited database) is logged and left at its default rather than stopping.
    pub fn load(store: &mut dyn Store) -> StoreResult<Settings> {
        let mut settings = Settings::default();
        for (key, raw) in store.list_settings()? {
            let Some(name) = key.strip_prefix(STORAGE_PREFIX) else { continue };
            let parsed = serde_json::from_str::<Value>(&raw).map_err(|error| error.to_string());
            if let Err(problem) = parsed.and_then(|value| settings.apply_one(name, &value)) {
                log::warn!("ignoring the stored setting {name}: {problem}");
            }
        }
        Ok(settings)
    }

    /// Every setting as a row of the `settings` table (key with its prefix, JSON text), for a
    /// backup import that replaces them all.
    pub fn stored_rows(&self) -> Vec<(String, String)> {
        let values = self.to_json();
        SETTING_NAMES.iter().map(|name| (format!("{STORAGE_PREFIX}{name}"), values[*name].to_string())).collect()
    }

    /// Stores every setting that differs from `previous`.
    pub fn save_changes(&self, previous: &Settings, store: &mut dyn Store) -> StoreResult<()> {
        let new_values = self.to_json();
        let old_values = previous.to_json();
        for name in SETTING_NAMES {
            if new_values[name] != old_values[name] {
                store.set_setting(&format!("{STORAGE_PREFIX}{name}"), &new_values[name].to_string())?;
            }
        }
        Ok(())
    }
}

fn whole_number(name: &str, value: &Value, minimum: u64, maximum: u64) -> Result<u64, String> {
    match value.as_u64() {
        Some(number) if (minimum..=maximum).contains(&number) => Ok(number),
        _ => Err(format!("{name} must be a whole number from {minimum} to {maximum}, got {value}")),
    }
}

fn flag(name: &str, value: &Value) -> Result<bool, String> {
    value.as_bool().ok_or_else(|| format!("{name} must be true or false, got {value}"))
}

fn text(name: &str, value: &Value) -> Result<String, String> {
    value.as_str().map(str::to_string).ok_or_else(|| format!("{name} must be a string, got {value}"))
}

/// The current settings, shared by every thread; replaced whole on change.
pub struct SettingsCell {
    current: RwLock<Arc<Settings>>,
    /// Held from reading the settings a change starts from until the changed ones are set (see
    /// `begin_change`). A may mutex: the holder parks on the store call in between.
    change: may::sync::Mutex<()>,
}

impl Default for SettingsCell {
    fn default() -> SettingsCell {
        SettingsCell::new(Settings::default())
    }
}

impl SettingsCell {
    pub fn new(settings: Settings) -> SettingsCell {
        SettingsCell { current: RwLock::new(Arc::new(settings)), change: may::sync::Mutex::new(()) }
    }

    /// Serialises changes (an admin's save, an import): each reads the current settings, stores
    /// its change and sets the result. Two at once would otherwise both start from the same
    /// settings, and the one set last would drop the other's change from memory while the
    /// database kept it, until the next start.
    pub fn begin_change(&self) -> may::sync::MutexGuard<'_, ()> {
        self.change.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self) -> Arc<Settings> {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub fn set(&self, settings: Settings) {
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(settings);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let defaults = Settings::default().to_json();
        assert_eq!(
            defaults,
            json!({"stats_save_interval_seconds": 60, "log_retention_days": 30, "log_max_rows": 100000,
                   "log_bodies": false, "log_body_max_bytes": 65536, "price_sync_interval_hours": 24,
                   "model_sync_interval_hours": 24, "models_dev_url": "https://models.dev",
                   "metrics_enabled": false, "metrics_token": "",
                   "response_store_hours": 24, "cors_allowed_origins": ""})
        );
        assert_eq!(defaults.as_object().unwrap().len(), SETTING_NAMES.len());
    }

    #[test]
    fn a_bad_value_names_the_field_and_changes_nothing() {
        let settings = Settings::default();
        let changes = json!({"log_bodies": true, "stats_save_interval_seconds": 0});
        let error = settings.with_changes(changes.as_object().unwrap()).unwrap_err();
        assert!(error.contains("stats_save_interval_seconds"), "{error}");
        let error = settings.with_changes(json!({"models_dev_url": "ftp://x"}).as_object().unwrap()).unwrap_err();
        assert!(error.contains("models_dev_url"), "{error}");
        let error = settings.with_changes(json!({"log_max_rows": -1}).as_object().unwrap()).unwrap_err();
        assert!(error.contains("log_max_rows"), "{error}");
        let error = settings.with_changes(json!({"response_store_hours": 0}).as_object().unwrap()).unwrap_err();
        assert!(error.contains("response_store_hours"), "{error}");
        let error = settings.with_changes(json!({"response_store_hours": 721}).as_object().unwrap()).unwrap_err();
        assert!(error.contains("response_store_hours"), "{error}");
        let error = settings.with_changes(json!({"cors_allowed_origins": "example.com"}).as_object().unwrap()).unwrap_err();
        assert!(error.contains("cors_allowed_origins"), "{error}");
        let error = settings.with_changes(json!({"nope": 1}).as_object().unwrap()).unwrap_err();
        assert!(error.contains("unknown setting"), "{error}");
    }

    /// Found by the `admin_settings_body` fuzz target: `"https://models[0, /"` lost its slash and
    /// kept the space before it, and sent back as shown it lost the space too.
    #[test]
    fn a_models_dev_url_with_whitespace_is_refused() {
        for url in ["https://models[0, /", "https://models.dev /", "https://models .dev", "https://models.dev\t/x"] {
            let error = Settings::default().with_changes(json!({"models_dev_url": url}).as_object().unwrap()).unwrap_err();
            assert!(error.contains("models_dev_url"), "{url:?}: {error}");
        }
        let accepted = Settings::default().with_changes(json!({"models_dev_url": " https://models.dev/x// "}).as_object().unwrap()).unwrap();
        assert_eq!(accepted.models_dev_url, "https://models.dev/x");
        let shown_and_sent_back = accepted.with_changes(accepted.to_json().as_object().unwrap()).unwrap();
        assert_eq!(shown_and_sent_back, accepted);
    }

    #[test]
    fn changes_apply_and_urls_lose_their_trailing_slash() {
        let changes = json!({"models_dev_url": "http://127.0.0.1:9/", "metrics_enabled": true, "response_store_hours": 2,
                             "cors_allowed_origins": "https://Chat.Example/ http://localhost:3000"});
        let updated = Settings::default().with_changes(changes.as_object().unwrap()).unwrap();
        assert_eq!(updated.cors_allowed_origins, "https://chat.example, http://localhost:3000");
        assert_eq!(updated.response_store_hours, 2);
        assert_eq!(updated.models_dev_url, "http://127.0.0.1:9");
        assert!(updated.metrics_enabled);
    }
}
