//! data/config.json plus OCTOPUS_* environment overrides, validated into `Config`.
//!
//! Loading works on JSON values first so that every problem can name the file and the exact key:
//! the file is merged key by key over the built-in defaults (unknown keys and wrong types are
//! errors, not silently ignored), then each `OCTOPUS_<PATH>` variable overrides its leaf, and only
//! then is the result turned into the typed `Config` and checked for sane values.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The whole validated configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub log: LogConfig,
    pub relay: RelayConfig,
    pub auth: AuthConfig,
    pub antigravity: AntigravityConfig,
    pub ampcode: AmpcodeConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Coroutine worker threads; 0 = one per CPU.
    pub workers: usize,
    pub max_body_bytes: usize,
    pub max_header_count: usize,
    pub max_head_bytes: usize,
    pub idle_timeout_seconds: u64,
    pub read_timeout_seconds: u64,
    pub write_timeout_seconds: u64,
    /// A request head must arrive in full within this time (of the accept for a connection's
    /// first request, of its first byte for later ones); slow clients are dropped.
    pub request_head_timeout_seconds: u64,
    /// A request body must bring at least this many bytes a second in every window of
    /// `request_head_timeout_seconds` (until it is complete) or the connection gets 408 and
    /// closes; 0 turns the check off.
    pub min_body_bytes_per_second: usize,
    /// Open connections per listener; past it a new connection replaces the one that has waited
    /// longest for a request head, or gets 503 when all are busy. 0 = derived from the open-file
    /// limit (half of it after a reserve of 256, between 16 and 16384).
    pub max_connections: usize,
    /// Request-body bytes held at once by all connections of a listener; a body that would
    /// pass it gets 503 with `Retry-After`. At least `max_body_bytes`.
    pub max_buffered_body_bytes: usize,
    /// When not empty (`127.0.0.1:8081`, say), the admin API and the panel are served on this
    /// address only, and the relay's address answers 404 for them.
    pub admin_listen: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatabaseConfig {
    /// `sqlite`, `mysql` or `postgres`.
    #[serde(rename = "type")]
    pub database_type: String,
    /// A file path for SQLite, a DSN URL for MySQL and PostgreSQL.
    pub path: String,
    /// Connections (and store threads) in the pool.
    pub connections: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogConfig {
    /// `off`, `error`, `warn`, `info`, `debug` or `trace`.
    pub level: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RelayConfig {
    /// The largest single SSE event accepted from an upstream.
    pub max_sse_event_size: usize,
    pub connect_timeout_seconds: u64,
    /// Default time to the first byte (non-stream) or first event (stream); groups may override.
    pub first_byte_timeout_seconds: u64,
    /// Longest silence allowed between two stream events.
    pub stream_idle_timeout_seconds: u64,
    /// Default deadline for one client request across all attempts; groups may override.
    pub total_timeout_seconds: u64,
    /// Default attempts per request when a group does not set its own.
    pub max_attempts: u32,
    /// `max_tokens` sent to Anthropic when the client did not give one.
    pub default_max_tokens: u32,
    /// A PEM bundle of extra CA certificates trusted for upstream TLS; empty = none.
    pub extra_ca_file: String,
    /// How often every channel base URL is probed for its delay; 0 turns probing off.
    pub probe_interval_seconds: u64,
    /// Whether image URLs from clients may point at loopback, private, link-local or CGNAT
    /// addresses when the gateway downloads them for an upstream (off: such URLs are refused,
    /// so a client cannot make the gateway reach into its own network).
    pub allow_private_media_urls: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuthConfig {
    /// Lifetime of an admin login token.
    pub token_ttl_seconds: u64,
    /// Failed logins from one address within `login_window_seconds` before it gets 429.
    pub max_failed_logins: u32,
    /// Failed logins for one username (from any address) within the window before it gets 429.
    /// Higher than the per-address limit: it stops guessing spread over many addresses, while
    /// one address alone hits its own limit first.
    pub max_failed_logins_per_user: u32,
    pub login_window_seconds: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AntigravityConfig {
    /// OAuth token endpoint used to exchange refresh tokens.
    pub token_url: String,
    /// OAuth client id and secret of the Antigravity app; never built into the binary.
    pub client_id: String,
    pub client_secret: String,
    /// GCP project id; empty = discovered with loadCodeAssist.
    pub project: String,
}

/// The Amp CLI proxy (`src/amp/`): Amp's provider calls go through the relay, its management
/// calls are reverse-proxied to `upstream_url` with the Amp key put in place of the client's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AmpcodeConfig {
    /// Off by default: the management paths are then not served at all (404).
    pub enabled: bool,
    /// Where management calls go, e.g. `https://ampcode.com`.
    pub upstream_url: String,
    /// The Amp API key; empty = `AMP_API_KEY`, then `~/.local/share/amp/secrets.json`.
    pub upstream_api_key: String,
    /// True: peers on a loopback address may use the management paths without a client key.
    /// False: everyone needs a client key (set it when a reverse proxy on the same host makes
    /// every peer look local). A valid client key is accepted either way.
    pub restrict_management_to_localhost: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            server: ServerConfig {
                host: "0.0.0.0".to_string(),
                port: 8080,
                workers: 0,
                max_body_bytes: 64 * 1024 * 1024,
                max_header_count: 100,
                max_head_bytes: 64 * 1024,
                idle_timeout_seconds: 75,
                read_timeout_seconds: 30,
                write_timeout_seconds: 60,
                request_head_timeout_seconds: 10,
                min_body_bytes_per_second: 4096,
                max_connections: 0,
                max_buffered_body_bytes: 256 * 1024 * 1024,
                admin_listen: String::new(),
            },
            database: DatabaseConfig {
                database_type: "sqlite".to_string(),
                path: "data/data.db".to_string(),
                connections: 4,
            },
            log: LogConfig { level: "info".to_string() },
            relay: RelayConfig {
                max_sse_event_size: 32 * 1024 * 1024,
                connect_timeout_seconds: 10,
                first_byte_timeout_seconds: 120,
                stream_idle_timeout_seconds: 120,
                total_timeout_seconds: 600,
                max_attempts: 3,
                default_max_tokens: 8192,
                extra_ca_file: String::new(),
                probe_interval_seconds: 600,
                allow_private_media_urls: false,
            },
            auth: AuthConfig {
                token_ttl_seconds: 7 * 24 * 3600,
                max_failed_logins: 5,
                max_failed_logins_per_user: 20,
                login_window_seconds: 900,
            },
            antigravity: AntigravityConfig {
                token_url: "https://oauth2.googleapis.com/token".to_string(),
                client_id: String::new(),
                client_secret: String::new(),
                project: String::new(),
            },
            ampcode: AmpcodeConfig {
                enabled: false,
                upstream_url: "https://ampcode.com".to_string(),
                upstream_api_key: String::new(),
                restrict_management_to_localhost: true,
            },
        }
    }
}

/// A configuration problem, always naming where it was found.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The file, or `environment` for an `OCTOPUS_*` variable.
    pub source: String,
    /// The dotted key (`server.port`) or variable name; empty for whole-file problems.
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(formatter, "{}: {}", self.source, self.problem)
        } else {
            write!(formatter, "{}: {}: {}", self.source, self.key, self.problem)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Where the configuration came from, for the startup log.
#[derive(Debug)]
pub struct LoadedConfig {
    pub config: Config,
    pub path: PathBuf,
    /// True when the file did not exist and was written with the defaults.
    pub created: bool,
}

/// Reads `path` (creating it with the defaults when missing), applies the environment and validates.
/// An existing file is never rewritten.
pub fn load(path: &Path, environment: &[(String, String)]) -> Result<LoadedConfig, ConfigError> {
    let source = path.display().to_string();
    if !path.exists() {
        write_default_file(path).map_err(|problem| ConfigError { source: source.clone(), key: String::new(), problem })?;
        let defaults = serde_json::to_value(Config::default()).expect("the default config serializes");
        let config = from_file_value(&defaults, &source, environment)?;
        return Ok(LoadedConfig { config, path: path.to_path_buf(), created: true });
    }
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
        source: source.clone(),
        key: String::new(),
        problem: format!("cannot read the file: {error}"),
    })?;
    let config = from_text(&text, &source, environment)?;
    Ok(LoadedConfig { config, path: path.to_path_buf(), created: false })
}

/// The config a file with this text would give (`source` names the file in errors): the text
/// merged over the defaults, then the environment, then validation. `load` without the IO, so
/// the fuzz targets can drive it too.
pub fn from_text(text: &str, source: &str, environment: &[(String, String)]) -> Result<Config, ConfigError> {
    let file_value: Value = serde_json::from_str(text).map_err(|error| ConfigError {
        source: source.to_string(),
        key: String::new(),
        problem: format!("not valid JSON: {error}"),
    })?;
    from_file_value(&file_value, source, environment)
}

fn from_file_value(file_value: &Value, source: &str, environment: &[(String, String)]) -> Result<Config, ConfigError> {
    let mut merged = serde_json::to_value(Config::default()).expect("the default config serializes");
    merge_over_defaults(&mut merged, file_value, "", source)?;
    apply_environment(&mut merged, "", environment)?;
    check_port_range(&merged, source)?;
    let config: Config = serde_json::from_value(merged).map_err(|error| ConfigError {
        source: source.to_string(),
        key: String::new(),
        problem: error.to_string(),
    })?;
    validate(&config, source)?;
    Ok(config)
}

/// Reads an existing `path`, applies the environment and validates, never writing anything: the
/// headless admin commands (`octopus export`, `reset-password`, ...) must not create a config
/// whose defaults would then point them at an empty database.
pub fn read_existing(path: &Path, environment: &[(String, String)]) -> Result<Config, ConfigError> {
    let source = path.display().to_string();
    let whole_file_error = |problem: String| ConfigError { source: source.clone(), key: String::new(), problem };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(whole_file_error(
                "the file does not exist (octopus start writes it on first start; or pass --config PATH)".to_string(),
            ));
        }
        Err(error) => return Err(whole_file_error(format!("cannot read the file: {error}"))),
    };
    from_text(&text, &source, environment)
}

/// The `OCTOPUS_*` variables of this process, the overrides `load` and `read_existing` apply.
/// Values that are not UTF-8 are kept (lossily) so validation names the variable instead of the
/// process panicking or silently ignoring it.
pub fn environment_overrides() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            name.starts_with("OCTOPUS_").then(|| (name, value.to_string_lossy().into_owned()))
        })
        .collect()
}

/// Builds a validated config from defaults plus an environment only (used by tests and tools).
pub fn from_environment(environment: &[(String, String)]) -> Result<Config, ConfigError> {
    let mut merged = serde_json::to_value(Config::default()).expect("the default config serializes");
    apply_environment(&mut merged, "", environment)?;
    check_port_range(&merged, "environment")?;
    let config: Config = serde_json::from_value(merged).map_err(|error| ConfigError {
        source: "environment".to_string(),
        key: String::new(),
        problem: error.to_string(),
    })?;
    validate(&config, "environment")?;
    Ok(config)
}

fn write_default_file(path: &Path) -> Result<(), String> {
    if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        create_private_dir_all(parent).map_err(|error| format!("cannot create {}: {error}", parent.display()))?;
    }
    let mut text = serde_json::to_string_pretty(&Config::default()).expect("the default config serializes");
    text.push('\n');
    write_private_file(path, text.as_bytes()).map_err(|error| format!("cannot write the default config: {error}"))
}

/// Creates a directory and its missing parents readable by the owner only (0700): the data
/// directory holds the database with every provider key. Directories that exist are left as
/// the admin made them.
pub fn create_private_dir_all(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Creates a new file readable and writable by the owner only (0600), whatever the umask: the
/// config may hold the Amp key and OAuth client secrets. Fails if the file exists.
fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(contents)
}

/// Copies each leaf of `file` over `target`, rejecting unknown keys and type mismatches.
fn merge_over_defaults(target: &mut Value, file: &Value, prefix: &str, source: &str) -> Result<(), ConfigError> {
    let Value::Object(file_map) = file else {
        let key = if prefix.is_empty() { String::new() } else { prefix.to_string() };
        return Err(ConfigError { source: source.to_string(), key, problem: "expected a JSON object".to_string() });
    };
    let target_map = target.as_object_mut().expect("defaults are objects where files may have objects");
    for (name, file_child) in file_map {
        let key = join_key(prefix, name);
        let Some(default_child) = target_map.get_mut(name) else {
            return Err(ConfigError {
                source: source.to_string(),
                key,
                problem: format!("unknown key (known keys here: {})", known_keys(target_map)),
            });
        };
        if default_child.is_object() {
            merge_over_defaults(default_child, file_child, &key, source)?;
        } else if same_json_kind(default_child, file_child) {
            *default_child = file_child.clone();
        } else {
            return Err(ConfigError {
                source: source.to_string(),
                key,
                problem: format!("expected {}, found {}", kind_name(default_child), kind_name(file_child)),
            });
        }
    }
    Ok(())
}

fn apply_environment(target: &mut Value, prefix: &str, environment: &[(String, String)]) -> Result<(), ConfigError> {
    let Value::Object(map) = target else { return Ok(()) };
    for (name, child) in map.iter_mut() {
        let key = join_key(prefix, name);
        if child.is_object() {
            apply_environment(child, &key, environment)?;
            continue;
        }
        let variable = format!("OCTOPUS_{}", key.replace('.', "_").to_uppercase());
        let Some((_, raw)) = environment.iter().rev().find(|(env_name, _)| *env_name == variable) else {
            continue;
        };
        let problem = |expected: &str| ConfigError {
            source: "environment".to_string(),
            key: variable.clone(),
            problem: format!("expected {expected}, found {raw:?}"),
        };
        *child = match child {
            Value::String(_) => Value::String(raw.clone()),
            Value::Bool(_) => match raw.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Value::Bool(true),
                "0" | "false" | "no" | "off" => Value::Bool(false),
                _ => return Err(problem("a boolean")),
            },
            Value::Number(_) => {
                let number: u64 = raw.trim().parse().map_err(|_| problem("a whole number"))?;
                Value::from(number)
            }
            _ => continue,
        };
    }
    Ok(())
}

/// The port is the one number whose type (u16) is narrower than "a whole number", so check it
/// before serde would reject it without naming the key.
fn check_port_range(merged: &Value, source: &str) -> Result<(), ConfigError> {
    let port = merged["server"]["port"].as_u64().unwrap_or(0);
    if port > u16::MAX as u64 {
        return Err(ConfigError {
            source: source.to_string(),
            key: "server.port".to_string(),
            problem: format!("must be between 1 and 65535, found {port}"),
        });
    }
    Ok(())
}

fn validate(config: &Config, source: &str) -> Result<(), ConfigError> {
    let error = |key: &str, problem: String| ConfigError { source: source.to_string(), key: key.to_string(), problem };
    if config.server.port == 0 {
        return Err(error("server.port", "must be between 1 and 65535".to_string()));
    }
    if config.server.host.trim().is_empty() {
        return Err(error("server.host", "must not be empty".to_string()));
    }
    if !["sqlite", "mysql", "postgres"].contains(&config.database.database_type.as_str()) {
        return Err(error(
            "database.type",
            format!("unknown database type {:?} (use sqlite, mysql or postgres)", config.database.database_type),
        ));
    }
    if config.database.path.trim().is_empty() {
        return Err(error("database.path", "must not be empty".to_string()));
    }
    if config.database.connections == 0 || config.database.connections > 64 {
        return Err(error("database.connections", "must be between 1 and 64".to_string()));
    }
    if parse_log_level(&config.log.level).is_none() {
        return Err(error(
            "log.level",
            format!("unknown level {:?} (use off, error, warn, info, debug or trace)", config.log.level),
        ));
    }
    let positive = [
        ("server.max_body_bytes", config.server.max_body_bytes as u64),
        ("server.max_header_count", config.server.max_header_count as u64),
        ("server.max_head_bytes", config.server.max_head_bytes as u64),
        ("server.idle_timeout_seconds", config.server.idle_timeout_seconds),
        ("server.read_timeout_seconds", config.server.read_timeout_seconds),
        ("server.write_timeout_seconds", config.server.write_timeout_seconds),
        ("server.request_head_timeout_seconds", config.server.request_head_timeout_seconds),
        ("server.max_buffered_body_bytes", config.server.max_buffered_body_bytes as u64),
        ("relay.max_sse_event_size", config.relay.max_sse_event_size as u64),
        ("relay.connect_timeout_seconds", config.relay.connect_timeout_seconds),
        ("relay.first_byte_timeout_seconds", config.relay.first_byte_timeout_seconds),
        ("relay.stream_idle_timeout_seconds", config.relay.stream_idle_timeout_seconds),
        ("relay.total_timeout_seconds", config.relay.total_timeout_seconds),
        ("relay.max_attempts", config.relay.max_attempts as u64),
        ("relay.default_max_tokens", config.relay.default_max_tokens as u64),
        ("auth.token_ttl_seconds", config.auth.token_ttl_seconds),
        ("auth.max_failed_logins", config.auth.max_failed_logins as u64),
        ("auth.max_failed_logins_per_user", config.auth.max_failed_logins_per_user as u64),
        ("auth.login_window_seconds", config.auth.login_window_seconds),
    ];
    for (key, value) in positive {
        if value == 0 {
            return Err(error(key, "must be greater than 0".to_string()));
        }
    }
    if config.server.max_buffered_body_bytes < config.server.max_body_bytes {
        return Err(error(
            "server.max_buffered_body_bytes",
            format!(
                "must be at least server.max_body_bytes ({}), or a body of the largest allowed size could never be read, found {}",
                config.server.max_body_bytes, config.server.max_buffered_body_bytes
            ),
        ));
    }
    if config.server.max_header_count > 1000 {
        return Err(error("server.max_header_count", "must be at most 1000".to_string()));
    }
    let amp_url = config.ampcode.upstream_url.trim();
    let amp_url_is_http = amp_url.strip_prefix("https://").or_else(|| amp_url.strip_prefix("http://")).is_some_and(|rest| !rest.is_empty());
    if config.ampcode.enabled && !amp_url_is_http {
        return Err(error(
            "ampcode.upstream_url",
            format!("must be an absolute http:// or https:// URL when ampcode.enabled is true, found {:?}", config.ampcode.upstream_url),
        ));
    }
    let admin_listen = config.server.admin_listen.trim();
    if !admin_listen.is_empty() && admin_listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(error(
            "server.admin_listen",
            format!("must be empty or an address with a port, like 127.0.0.1:8081 or [::1]:8081, found {admin_listen:?}"),
        ));
    }
    if !config.relay.extra_ca_file.is_empty() && !Path::new(&config.relay.extra_ca_file).is_file() {
        return Err(error("relay.extra_ca_file", format!("{:?} is not a readable file", config.relay.extra_ca_file)));
    }
    Ok(())
}

/// The log filter for a configured level name.
pub fn parse_log_level(level: &str) -> Option<log::LevelFilter> {
    match level.to_ascii_lowercase().as_str() {
        "off" => Some(log::LevelFilter::Off),
        "error" => Some(log::LevelFilter::Error),
        "warn" | "warning" => Some(log::LevelFilter::Warn),
        "info" => Some(log::LevelFilter::Info),
        "debug" => Some(log::LevelFilter::Debug),
        "trace" => Some(log::LevelFilter::Trace),
        _ => None,
    }
}

fn join_key(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}

fn known_keys(map: &Map<String, Value>) -> String {
    map.keys().cloned().collect::<Vec<_>>().join(", ")
}

fn same_json_kind(default: &Value, given: &Value) -> bool {
    match default {
        Value::Number(_) => given.as_u64().is_some(),
        _ => std::mem::discriminant(default) == std::mem::discriminant(given),
    }
}

fn kind_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a whole number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("octopus-config-{name}-{}", crate::util::random_alphanumeric(8)));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect()
    }

    #[test]
    fn first_load_writes_the_documented_defaults() {
        let path = temp_dir("defaults").join("data/config.json");
        let loaded = load(&path, &[]).unwrap();
        assert!(loaded.created);
        assert_eq!(loaded.config, Config::default());
        let written: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(written["server"]["host"], "0.0.0.0");
        assert_eq!(written["server"]["port"], 8080);
        assert_eq!(written["database"]["type"], "sqlite");
        assert_eq!(written["database"]["path"], "data/data.db");
        assert_eq!(written["log"]["level"], "info");
        assert!(!load(&path, &[]).unwrap().created);
    }

    #[test]
    fn the_default_file_and_its_new_directory_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let base = temp_dir("private");
        let path = base.join("fresh/data/config.json");
        load(&path, &[]).unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600, "the config file");
        assert_eq!(mode(&base.join("fresh/data")), 0o700, "the data directory");
        assert_eq!(mode(&base.join("fresh")), 0o700, "a missing parent made on the way");
    }

    #[test]
    fn partial_file_keeps_defaults_for_the_rest() {
        let path = temp_dir("partial").join("config.json");
        std::fs::write(&path, r#"{"server":{"port":9090},"log":{"level":"debug"}}"#).unwrap();
        let config = load(&path, &[]).unwrap().config;
        assert_eq!(config.server.port, 9090);
        assert_eq!(config.server.host, "0.0.0.0");
        assert_eq!(config.log.level, "debug");
    }

    #[test]
    fn environment_overrides_every_leaf_by_path() {
        let path = temp_dir("env").join("config.json");
        std::fs::write(&path, r#"{"server":{"port":9090}}"#).unwrap();
        let environment = env(&[
            ("OCTOPUS_SERVER_PORT", "7070"),
            ("OCTOPUS_SERVER_HOST", "127.0.0.1"),
            ("OCTOPUS_DATABASE_TYPE", "postgres"),
            ("OCTOPUS_DATABASE_PATH", "postgres://postgres@127.0.0.1/octopus"),
            ("OCTOPUS_LOG_LEVEL", "warn"),
            ("OCTOPUS_RELAY_MAX_SSE_EVENT_SIZE", "1024"),
            ("OCTOPUS_RELAY_ALLOW_PRIVATE_MEDIA_URLS", "true"),
            ("OCTOPUS_SERVER_ADMIN_LISTEN", "127.0.0.1:8081"),
            ("OCTOPUS_SERVER_MAX_CONNECTIONS", "500"),
            ("OCTOPUS_SERVER_REQUEST_HEAD_TIMEOUT_SECONDS", "5"),
            ("OCTOPUS_SERVER_MIN_BODY_BYTES_PER_SECOND", "0"),
        ]);
        let config = load(&path, &environment).unwrap().config;
        assert_eq!(config.server.port, 7070);
        assert_eq!(config.server.host, "127.0.0.1");
        assert_eq!(config.database.database_type, "postgres");
        assert_eq!(config.database.path, "postgres://postgres@127.0.0.1/octopus");
        assert_eq!(config.log.level, "warn");
        assert_eq!(config.relay.max_sse_event_size, 1024);
        assert!(config.relay.allow_private_media_urls);
        assert_eq!(config.server.admin_listen, "127.0.0.1:8081");
        assert_eq!(config.server.max_connections, 500);
        assert_eq!(config.server.request_head_timeout_seconds, 5);
        assert_eq!(config.server.min_body_bytes_per_second, 0);
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_problem_and_leave_the_file_alone() {
        let cases = [
            ("{not json", "", "not valid JSON"),
            (r#"{"server":{"port":"eighty"}}"#, "server.port", "expected a whole number, found a string"),
            (r#"{"server":{"port":70000}}"#, "server.port", "between 1 and 65535, found 70000"),
            (r#"{"server":{"port":0}}"#, "server.port", "between 1 and 65535"),
            (r#"{"database":{"type":"oracle"}}"#, "database.type", "unknown database type \"oracle\""),
            (r#"{"log":{"level":"loud"}}"#, "log.level", "unknown level"),
            (r#"{"sever":{"port":1}}"#, "sever", "unknown key"),
            (r#"{"server":5}"#, "server", "expected a JSON object"),
            (r#"{"server":{"admin_listen":"localhost"}}"#, "server.admin_listen", "an address with a port"),
            (r#"{"server":{"request_head_timeout_seconds":0}}"#, "server.request_head_timeout_seconds", "greater than 0"),
            (r#"{"server":{"max_buffered_body_bytes":1024}}"#, "server.max_buffered_body_bytes", "at least server.max_body_bytes"),
        ];
        for (text, key, problem) in cases {
            let path = temp_dir("bad").join("config.json");
            std::fs::write(&path, text).unwrap();
            let error = load(&path, &[]).unwrap_err();
            assert_eq!(error.source, path.display().to_string(), "{text}");
            assert_eq!(error.key, key, "{text}: {error}");
            assert!(error.to_string().contains(problem), "{text}: {error}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "the user's file must not change");
        }
    }

    #[test]
    fn ampcode_block_defaults_file_and_environment() {
        let defaults = Config::default().ampcode;
        assert!(!defaults.enabled);
        assert_eq!(defaults.upstream_url, "https://ampcode.com");
        assert_eq!(defaults.upstream_api_key, "");
        assert!(defaults.restrict_management_to_localhost);
        let path = temp_dir("amp").join("config.json");
        std::fs::write(&path, r#"{"ampcode":{"enabled":true,"upstream_url":"http://127.0.0.1:9"}}"#).unwrap();
        let environment = env(&[
            ("OCTOPUS_AMPCODE_UPSTREAM_API_KEY", "sgamp_from_env"),
            ("OCTOPUS_AMPCODE_RESTRICT_MANAGEMENT_TO_LOCALHOST", "false"),
        ]);
        let config = load(&path, &environment).unwrap().config;
        assert!(config.ampcode.enabled);
        assert_eq!(config.ampcode.upstream_url, "http://127.0.0.1:9");
        assert_eq!(config.ampcode.upstream_api_key, "sgamp_from_env");
        assert!(!config.ampcode.restrict_management_to_localhost);
        let config = from_environment(&env(&[("OCTOPUS_AMPCODE_ENABLED", "1"), ("OCTOPUS_AMPCODE_UPSTREAM_URL", "https://amp.example")])).unwrap();
        assert!(config.ampcode.enabled);
        assert_eq!(config.ampcode.upstream_url, "https://amp.example");
        let error = from_environment(&env(&[("OCTOPUS_AMPCODE_ENABLED", "maybe")])).unwrap_err();
        assert_eq!(error.key, "OCTOPUS_AMPCODE_ENABLED");
        let error = from_environment(&env(&[("OCTOPUS_AMPCODE_ENABLED", "true"), ("OCTOPUS_AMPCODE_UPSTREAM_URL", "ampcode.com")])).unwrap_err();
        assert_eq!(error.key, "ampcode.upstream_url");
        assert!(error.problem.contains("http://"), "{error}");
    }

    #[test]
    fn bad_environment_values_name_the_variable() {
        let error = from_environment(&env(&[("OCTOPUS_SERVER_PORT", "http")])).unwrap_err();
        assert_eq!(error.source, "environment");
        assert_eq!(error.key, "OCTOPUS_SERVER_PORT");
        let error = from_environment(&env(&[("OCTOPUS_DATABASE_TYPE", "oracle")])).unwrap_err();
        assert_eq!(error.key, "database.type");
    }
}
