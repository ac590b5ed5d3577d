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

/// How model sync files a channel's newly listed models into existing groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AutoGroup {
    /// New models are not added to any group.
    #[default]
    None,
    /// A new model joins the group whose name equals the model id.
    Exact,
    /// A new model joins every group whose name contains the model id or is contained in it,
    /// ignoring case.
    Fuzzy,
    /// A new model joins every group whose `match_regex` matches the model id.
    Regex,
}

impl AutoGroup {
    pub fn as_str(self) -> &'static str {
        match self {
            AutoGroup::None => "none",
            AutoGroup::Exact => "exact",
            AutoGroup::Fuzzy => "fuzzy",
            AutoGroup::Regex => "regex",
        }
    }

    pub fn parse(name: &str) -> Option<AutoGroup> {
        [AutoGroup::None, AutoGroup::Exact, AutoGroup::Fuzzy, AutoGroup::Regex]
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
    /// How model sync adds this channel's new models to groups.
    pub auto_group: AutoGroup,
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
    /// Model ids this regular expression matches are added to the group by model sync on
    /// channels whose `auto_group` is `regex`; empty matches nothing.
    pub match_regex: String,
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
    /// Requests per minute this key may start; 0 = no limit.
    pub rpm: u64,
    /// Tokens (input plus output of finished requests) per minute; 0 = no limit.
    pub tpm: u64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A model price in USD per one million tokens, optionally specific to one channel.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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

/// The additive counters of one statistics bucket. Every field only ever grows, so buckets from
/// several gateways (and several flushes) are combined by adding them up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsCounters {
    pub requests: i64,
    pub success: i64,
    pub failed: i64,
    /// All prompt tokens, cache reads and writes included.
    pub input_tokens: i64,
    /// All generated tokens, reasoning included.
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    pub reasoning_tokens: i64,
    /// Cost in micro-dollars (USD x 1e6).
    pub cost_micros: i64,
    /// Sum of request latencies, for averages.
    pub latency_ms_sum: i64,
    /// Sum of time-to-first-token over the requests that had one (`ttft_count`).
    pub ttft_ms_sum: i64,
    pub ttft_count: i64,
}

impl StatsCounters {
    pub fn add(&mut self, other: &StatsCounters) {
        self.requests += other.requests;
        self.success += other.success;
        self.failed += other.failed;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cache_read_tokens += other.cache_read_tokens;
        self.cache_write_tokens += other.cache_write_tokens;
        self.reasoning_tokens += other.reasoning_tokens;
        self.cost_micros += other.cost_micros;
        self.latency_ms_sum += other.latency_ms_sum;
        self.ttft_ms_sum += other.ttft_ms_sum;
        self.ttft_count += other.ttft_count;
    }

    /// The counters in the order of `STATS_COUNTER_COLUMNS`.
    pub fn to_array(&self) -> [i64; 12] {
        [
            self.requests,
            self.success,
            self.failed,
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.reasoning_tokens,
            self.cost_micros,
            self.latency_ms_sum,
            self.ttft_ms_sum,
            self.ttft_count,
        ]
    }

    /// The inverse of `to_array`.
    pub fn from_array(values: [i64; 12]) -> StatsCounters {
        let [requests, success, failed, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, cost_micros, latency_ms_sum, ttft_ms_sum, ttft_count] =
            values;
        StatsCounters {
            requests,
            success,
            failed,
            input_tokens,
            output_tokens,
            cache_read_tokens,
            cache_write_tokens,
            reasoning_tokens,
            cost_micros,
            latency_ms_sum,
            ttft_ms_sum,
            ttft_count,
        }
    }
}

/// The counter columns of `stats_hourly`, in `StatsCounters::to_array` order.
pub const STATS_COUNTER_COLUMNS: [&str; 12] = [
    "requests",
    "success",
    "failed",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_micros",
    "latency_ms_sum",
    "ttft_ms_sum",
    "ttft_count",
];

/// Which statistics bucket a request lands in: its UTC hour and its dimensions. An id of 0 or an
/// empty name means the request had none (e.g. it failed before any channel was chosen).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatsKey {
    /// Unix seconds of the start of the UTC hour.
    pub hour: i64,
    pub channel_id: i64,
    pub api_key_id: i64,
    pub group: String,
    /// The upstream model.
    pub model: String,
}

/// One row of `stats_hourly`, or of a grouped query over it (then the dimensions that were not
/// grouped on are zero or empty).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsRow {
    pub key: StatsKey,
    pub counters: StatsCounters,
}

/// What a statistics query groups by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsGrouping {
    /// One row over everything.
    Total,
    Hour,
    Channel,
    ApiKey,
    Group,
    ChannelModel,
    /// Every dimension but the hour: used to roll a day's hours into one row each.
    AllDimensions,
}

impl StatsGrouping {
    /// Keeps only the dimensions this grouping looks at, so in-memory rows can be merged with
    /// rows the database grouped the same way.
    pub fn project(self, key: &StatsKey) -> StatsKey {
        match self {
            StatsGrouping::Total => StatsKey::default(),
            StatsGrouping::Hour => StatsKey { hour: key.hour, ..StatsKey::default() },
            StatsGrouping::Channel => StatsKey { channel_id: key.channel_id, ..StatsKey::default() },
            StatsGrouping::ApiKey => StatsKey { api_key_id: key.api_key_id, ..StatsKey::default() },
            StatsGrouping::Group => StatsKey { group: key.group.clone(), ..StatsKey::default() },
            StatsGrouping::ChannelModel => {
                StatsKey { channel_id: key.channel_id, model: key.model.clone(), ..StatsKey::default() }
            }
            StatsGrouping::AllDimensions => StatsKey { hour: 0, ..key.clone() },
        }
    }

    /// The key columns selected for this grouping, in `StatsKey` order, as SQL expressions.
    pub fn key_columns(self) -> [&'static str; 5] {
        let all = self == StatsGrouping::AllDimensions;
        let hour = if self == StatsGrouping::Hour { "hour" } else { "0" };
        let channel = if all || matches!(self, StatsGrouping::Channel | StatsGrouping::ChannelModel) { "channel_id" } else { "0" };
        let api_key = if all || self == StatsGrouping::ApiKey { "api_key_id" } else { "0" };
        let group = if all || self == StatsGrouping::Group { "group_name" } else { "''" };
        let model = if all || self == StatsGrouping::ChannelModel { "model" } else { "''" };
        [hour, channel, api_key, group, model]
    }
}

/// One try of a logged request, kept in the `detail` text of its log (`store::log_detail`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoggedAttempt {
    pub channel_id: i64,
    pub channel_name: String,
    pub key_id: i64,
    pub base_url: String,
    pub model: String,
    pub outcome: String,
    pub status: Option<u16>,
    pub duration_ms: u64,
}

/// One request log (`request_logs`): a finished relay request. Never holds a secret.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestLog {
    pub id: i64,
    pub time_ms: i64,
    pub api_key_id: Option<i64>,
    pub api_key_name: String,
    pub group: String,
    pub channel_id: Option<i64>,
    pub channel_name: String,
    pub model: String,
    pub client_format: String,
    pub status_code: u16,
    pub success: bool,
    pub attempts: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost_micros: i64,
    pub ttft_ms: Option<i64>,
    pub latency_ms: i64,
    pub stream: bool,
    pub error: String,
    pub attempt_details: Vec<LoggedAttempt>,
    /// Kept only when `log_bodies` is on; capped and redacted.
    pub request_body: Option<String>,
    pub response_body: Option<String>,
}

/// A request log as it is written: the columns the admin API filters on, the `detail` text
/// holding everything else (`store::log_detail`), and the bodies. The stats writer builds these
/// straight from the relay's records; reads come back as `RequestLog`s.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogRow {
    pub id: i64,
    pub time_ms: i64,
    pub api_key_id: Option<i64>,
    pub group: String,
    pub channel_id: Option<i64>,
    pub success: bool,
    pub detail: String,
    pub request_body: Option<String>,
    pub response_body: Option<String>,
}

impl LogRow {
    /// The row of a log (its `detail` encoded).
    pub fn of(log: &RequestLog) -> LogRow {
        LogRow {
            id: log.id,
            time_ms: log.time_ms,
            api_key_id: log.api_key_id,
            group: log.group.clone(),
            channel_id: log.channel_id,
            success: log.success,
            detail: crate::store::log_detail::encode_log(log),
            request_body: log.request_body.clone(),
            response_body: log.response_body.clone(),
        }
    }

    /// The log this row holds (its `detail` decoded).
    pub fn into_log(self) -> crate::store::StoreResult<RequestLog> {
        let mut log = RequestLog {
            id: self.id,
            time_ms: self.time_ms,
            api_key_id: self.api_key_id,
            group: self.group,
            channel_id: self.channel_id,
            success: self.success,
            request_body: self.request_body,
            response_body: self.response_body,
            ..RequestLog::default()
        };
        crate::store::log_detail::decode_into(&self.detail, &mut log)?;
        Ok(log)
    }
}

/// Filters of `GET /api/v1/logs`; `None` means "any".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogFilter {
    pub group: Option<String>,
    pub channel_id: Option<i64>,
    pub api_key_id: Option<i64>,
    pub success: Option<bool>,
    /// Unix milliseconds, inclusive.
    pub from_ms: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub to_ms: Option<i64>,
}

/// One stored OpenAI Responses answer (`stored_responses`), for `previous_response_id` and the
/// `/v1/responses/{id}` endpoints. The JSON columns are kept as text: the store never looks
/// inside them.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredResponse {
    /// The `resp_…` id the client saw.
    pub id: String,
    /// The client key that created it; only that key may read, continue or delete it.
    pub api_key_id: i64,
    pub created_at: i64,
    /// Unix seconds after which the response is treated as gone (and pruned).
    pub expires_at: i64,
    /// The group (model) the client asked for.
    pub model: String,
    /// The response object as the client received it (streams: the terminal event's response).
    pub response_json: String,
    /// A JSON array: every input item of the conversation up to this turn, earlier turns expanded.
    pub input_items: String,
    /// A JSON array: this response's output items.
    pub output_items: String,
    /// The bytes of the three JSON texts, the unit of the size caps.
    pub size_bytes: i64,
}
