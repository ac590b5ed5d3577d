//! The stored entities: plain data shared by the store backends, the admin API and the relay snapshot.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The wire format a channel speaks upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelType {
    OpenaiChat,
    OpenaiResponses,
    Anthropic,
    Gemini,
    Antigravity,
}

impl ChannelType {
    pub const ALL: [ChannelType; 5] = [
        ChannelType::OpenaiChat,
        ChannelType::OpenaiResponses,
        ChannelType::Anthropic,
        ChannelType::Gemini,
        ChannelType::Antigravity,
    ];

    /// The stable name used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelType::OpenaiChat => "openai_chat",
            ChannelType::OpenaiResponses => "openai_responses",
            ChannelType::Anthropic => "anthropic",
            ChannelType::Gemini => "gemini",
            ChannelType::Antigravity => "antigravity",
        }
    }

    pub fn parse(name: &str) -> Option<ChannelType> {
        ChannelType::ALL.into_iter().find(|channel_type| channel_type.as_str() == name)
    }

    /// A human-readable name for the panel.
    pub fn display_name(self) -> &'static str {
        match self {
            ChannelType::OpenaiChat => "OpenAI Chat Completions",
            ChannelType::OpenaiResponses => "OpenAI Responses",
            ChannelType::Anthropic => "Anthropic Messages",
            ChannelType::Gemini => "Google Gemini",
            ChannelType::Antigravity => "Antigravity (Cloud Code)",
        }
    }

    /// The path appended to a base URL, as documented for users (`{model}` is the upstream model).
    pub fn path_template(self) -> &'static str {
        match self {
            ChannelType::OpenaiChat => "/chat/completions",
            ChannelType::OpenaiResponses => "/responses",
            ChannelType::Anthropic => "/messages",
            ChannelType::Gemini => "/models/{model}:generateContent",
            ChannelType::Antigravity => "/v1internal:generateContent",
        }
    }

    /// The provider's public base URL, offered as the default when creating a channel.
    pub fn default_base_url(self) -> &'static str {
        match self {
            ChannelType::OpenaiChat | ChannelType::OpenaiResponses => "https://api.openai.com/v1",
            ChannelType::Anthropic => "https://api.anthropic.com/v1",
            ChannelType::Gemini => "https://generativelanguage.googleapis.com/v1beta",
            ChannelType::Antigravity => "https://cloudcode-pa.googleapis.com",
        }
    }
}

/// How a group spreads requests over its items.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupMode {
    RoundRobin,
    Random,
    Failover,
    Weighted,
}

impl GroupMode {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupMode::RoundRobin => "round_robin",
            GroupMode::Random => "random",
            GroupMode::Failover => "failover",
            GroupMode::Weighted => "weighted",
        }
    }

    pub fn parse(name: &str) -> Option<GroupMode> {
        [GroupMode::RoundRobin, GroupMode::Random, GroupMode::Failover, GroupMode::Weighted]
            .into_iter()
            .find(|mode| mode.as_str() == name)
    }
}

/// One upstream API key of a channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelKey {
    /// Database id; 0 before the key is stored.
    #[serde(default)]
    pub id: i64,
    pub key: String,
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default)]
    pub remark: String,
}

/// A provider channel: one wire format, several base URLs and keys.
#[derive(Clone, Debug, PartialEq)]
pub struct Channel {
    pub id: i64,
    pub name: String,
    pub channel_type: ChannelType,
    pub enabled: bool,
    pub base_urls: Vec<String>,
    pub keys: Vec<ChannelKey>,
    pub models: Vec<String>,
    pub headers: BTreeMap<String, String>,
    /// Proxy URL (`http://`, `https://` or `socks5://`); empty for a direct connection.
    pub proxy: String,
    pub auto_sync: bool,
    /// Only models matching this regular expression are kept by model sync; empty keeps all.
    pub match_regex: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One member of a group: a channel and the model name sent upstream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupItem {
    pub channel_id: i64,
    pub model: String,
    #[serde(default)]
    pub priority: i32,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// A group: its name is the model name clients call.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub id: i64,
    pub name: String,
    pub mode: GroupMode,
    pub items: Vec<GroupItem>,
    /// Attempts across keys, endpoints and items before giving up.
    pub max_attempts: u32,
    /// Time allowed until the first byte (non-stream) or first event (stream); 0 = config default.
    pub first_byte_timeout_ms: u64,
    /// Overall deadline for one client request across all attempts; 0 = config default.
    pub total_timeout_ms: u64,
    /// Sticky routing per (client key, group) for this many seconds; 0 = off.
    pub sticky_seconds: u64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A client API key. The secret itself is never stored, only its SHA-256.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiKey {
    pub id: i64,
    pub name: String,
    /// Lower-case hex SHA-256 of the full key.
    pub key_hash: String,
    /// The first characters of the key, for display (`sk-octopus-AbCd`).
    pub key_prefix: String,
    pub enabled: bool,
    /// Unix seconds; None = never expires.
    pub expires_at: Option<i64>,
    /// Spending cap in USD; None = unlimited.
    pub max_cost: Option<f64>,
    /// Group names this key may call; empty = all.
    pub allowed_models: Vec<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A model price in USD per one million tokens, optionally specific to one channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelPrice {
    #[serde(default)]
    pub id: i64,
    pub model: String,
    #[serde(default)]
    pub channel_id: Option<i64>,
    #[serde(default)]
    pub input: f64,
    #[serde(default)]
    pub output: f64,
    #[serde(default)]
    pub cache_read: f64,
    #[serde(default)]
    pub cache_write: f64,
}

/// The single admin account.
#[derive(Clone, Debug, PartialEq)]
pub struct AdminUser {
    pub id: i64,
    pub username: String,
    /// A PHC string (argon2id).
    pub password_hash: String,
    pub must_change_password: bool,
}

/// A logged-in admin session; only the SHA-256 of the bearer token is stored.
#[derive(Clone, Debug, PartialEq)]
pub struct AdminSession {
    pub token_hash: String,
    pub user_id: i64,
    pub expires_at: i64,
    pub created_at: i64,
}

fn default_true() -> bool {
    true
}

fn default_weight() -> u32 {
    1
}
