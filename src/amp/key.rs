//! The Amp API key injected into management calls: from the config, then `AMP_API_KEY`, then the
//! file the Amp CLI writes at login (`~/.local/share/amp/secrets.json`), cached for 5 minutes.
//!
//! The key is never logged, and only its source is ever named in messages.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a resolved key (or the absence of one) is reused before the sources are read again,
/// so that a key added by `amp login` or a changed environment is picked up without a restart.
const CACHE_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// Resolves and caches the Amp key.
pub struct AmpKeySource {
    configured_key: String,
    upstream_url: String,
    cached: Mutex<Option<(Instant, Option<String>)>>,
}

impl AmpKeySource {
    pub fn new(configured_key: &str, upstream_url: &str) -> AmpKeySource {
        AmpKeySource { configured_key: configured_key.trim().to_string(), upstream_url: upstream_url.to_string(), cached: Mutex::new(None) }
    }

    /// The key to send upstream, or None when no source has one.
    ///
    /// The file read happens at most once per five minutes and is a few hundred bytes from the
    /// local disk, so it is done on the calling coroutine rather than on a helper thread.
    pub fn current(&self) -> Option<String> {
        let now = Instant::now();
        {
            let cached = self.cached.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some((resolved_at, key)) = cached.as_ref()
                && now.duration_since(*resolved_at) < CACHE_LIFETIME
            {
                return key.clone();
            }
        }
        let environment_key = std::env::var("AMP_API_KEY").ok();
        let secrets_text = secrets_file_path().and_then(|path| std::fs::read_to_string(path).ok());
        let key = resolve(&self.configured_key, environment_key.as_deref(), secrets_text.as_deref(), &self.upstream_url);
        *self.cached.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((now, key.clone()));
        key
    }
}

/// `$HOME/.local/share/amp/secrets.json`, where the Amp CLI keeps its key after `amp login`.
fn secrets_file_path() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|home| !home.is_empty())?;
    Some(PathBuf::from(home).join(".local/share/amp/secrets.json"))
}

/// The first non-empty key of: the configured one, the environment's, the secrets file's.
pub fn resolve(configured_key: &str, environment_key: Option<&str>, secrets_text: Option<&str>, upstream_url: &str) -> Option<String> {
    let non_empty = |key: &str| Some(key.trim().to_string()).filter(|key| !key.is_empty());
    non_empty(configured_key)
        .or_else(|| environment_key.and_then(non_empty))
        .or_else(|| secrets_text.and_then(|text| key_from_secrets(text, upstream_url)))
}

/// Reads the key out of Amp's secrets file. Amp writes a flat JSON object whose entries are named
/// `apiKey@<server URL>` (e.g. `"apiKey@https://ampcode.com/": "sgamp_..."`); we prefer the entry
/// for our upstream, then accept any `apiKey...` entry, then `api_key`, so older or future
/// layouts still work. Anything that is not a JSON object yields None.
pub fn key_from_secrets(text: &str, upstream_url: &str) -> Option<String> {
    let value: Value = serde_json::from_str(text).ok()?;
    let object = value.as_object()?;
    let string_at = |name: &str| object.get(name).and_then(Value::as_str).map(str::trim).filter(|key| !key.is_empty()).map(str::to_string);
    let base = upstream_url.trim_end_matches('/');
    string_at(&format!("apiKey@{base}/"))
        .or_else(|| string_at(&format!("apiKey@{base}")))
        .or_else(|| {
            object
                .iter()
                .filter(|(name, _)| name.starts_with("apiKey"))
                .find_map(|(_, value)| value.as_str().map(str::trim).filter(|key| !key.is_empty()).map(str::to_string))
        })
        .or_else(|| string_at("api_key"))
        .or_else(|| string_at("apiKey"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_wins_then_environment_then_file() {
        let file = r#"{"apiKey@https://ampcode.com/": "sgamp_file"}"#;
        assert_eq!(resolve("sgamp_config", Some("sgamp_env"), Some(file), "https://ampcode.com").as_deref(), Some("sgamp_config"));
        assert_eq!(resolve("  ", Some("sgamp_env"), Some(file), "https://ampcode.com").as_deref(), Some("sgamp_env"));
        assert_eq!(resolve("", Some(""), Some(file), "https://ampcode.com").as_deref(), Some("sgamp_file"));
        assert_eq!(resolve("", None, None, "https://ampcode.com"), None);
        assert_eq!(resolve("", None, Some("not json"), "https://ampcode.com"), None);
    }

    #[test]
    fn secrets_file_shapes_are_read_liberally() {
        let url = "https://ampcode.com";
        let both = r#"{"apiKey@https://other.example/": "sgamp_other", "apiKey@https://ampcode.com/": "sgamp_ours"}"#;
        assert_eq!(key_from_secrets(both, url).as_deref(), Some("sgamp_ours"));
        assert_eq!(key_from_secrets(r#"{"apiKey@https://ampcode.com": "sgamp_noslash"}"#, url).as_deref(), Some("sgamp_noslash"));
        assert_eq!(key_from_secrets(r#"{"apiKey@https://self-hosted.example/": "sgamp_any"}"#, url).as_deref(), Some("sgamp_any"));
        assert_eq!(key_from_secrets(r#"{"api_key": "sgamp_snake"}"#, url).as_deref(), Some("sgamp_snake"));
        assert_eq!(key_from_secrets(r#"{"apiKey": "sgamp_plain"}"#, url).as_deref(), Some("sgamp_plain"));
        assert_eq!(key_from_secrets(r#"["sgamp"]"#, url), None);
        assert_eq!(key_from_secrets(r#"{"apiKey@https://ampcode.com/": ""}"#, url), None);
    }

    #[test]
    fn the_resolved_key_is_cached() {
        let source = AmpKeySource::new("sgamp_configured", "https://ampcode.com");
        assert_eq!(source.current().as_deref(), Some("sgamp_configured"));
        *source.cached.lock().unwrap() = Some((Instant::now(), Some("sgamp_cached".to_string())));
        assert_eq!(source.current().as_deref(), Some("sgamp_cached"));
        let expired = Instant::now().checked_sub(CACHE_LIFETIME + Duration::from_secs(1));
        if let Some(expired) = expired {
            *source.cached.lock().unwrap() = Some((expired, Some("sgamp_stale".to_string())));
            assert_eq!(source.current().as_deref(), Some("sgamp_configured"));
        }
    }
}
