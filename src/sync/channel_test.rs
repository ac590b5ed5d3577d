//! `POST /api/v1/channels/{id}/test`: one minimal generation request in the channel's own wire
//! format, to tell an admin whether its key, base URL and model work.

use std::io::Read;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::relay::outbound::{channel_format, upstream_headers};
use crate::store::entities::{Channel, ChannelType};
use crate::upstream::client::{UpstreamClient, UpstreamRequest};
use crate::upstream::endpoint::upstream_url;

const TEST_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_TEST_BODY_BYTES: u64 = 1024 * 1024;
const TEST_PROMPT: &str = "Say hi";
const TEST_MAX_TOKENS: u32 = 16;

/// What the test found; `message` never contains the key.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelTestOutcome {
    pub ok: bool,
    /// The upstream's HTTP status; 0 when no answer came.
    pub status: u16,
    pub latency_ms: u64,
    pub message: String,
}

/// Sends the test request to the first enabled key and the first base URL of `channel`.
pub fn test_channel(client: &UpstreamClient, channel: &Channel, model: &str) -> ChannelTestOutcome {
    let failed = |message: String| ChannelTestOutcome { ok: false, status: 0, latency_ms: 0, message };
    if channel.channel_type == ChannelType::Antigravity {
        return failed("testing Antigravity channels is not supported yet".to_string());
    }
    let Some(key) = channel.keys.iter().find(|key| key.enabled) else {
        return failed("the channel has no enabled key".to_string());
    };
    let Some(base_url) = channel.base_urls.first() else {
        return failed("the channel has no base URL".to_string());
    };
    let body = test_body(channel.channel_type, model);
    let started = Instant::now();
    let sent = client.send(UpstreamRequest {
        method: "POST".to_string(),
        url: upstream_url(channel.channel_type, base_url, model, false),
        headers: upstream_headers(&[], false, channel, &key.key, false),
        body: body.to_string().into_bytes(),
        proxy: (!channel.proxy.is_empty()).then(|| channel.proxy.clone()),
        response_head_timeout: Some(TEST_TIMEOUT),
    });
    let hide_key = |text: String| if key.key.is_empty() { text } else { text.replace(&key.key, "****") };
    let response = match sent {
        Ok(response) => response,
        Err(error) => {
            let mut outcome = failed(hide_key(error.to_string()));
            outcome.latency_ms = elapsed_ms(started);
            return outcome;
        }
    };
    let status = response.status;
    let mut answer = Vec::new();
    let read = response.body.take(MAX_TEST_BODY_BYTES).read_to_end(&mut answer);
    let latency_ms = elapsed_ms(started);
    if let Err(error) = read {
        return ChannelTestOutcome { ok: false, status, latency_ms, message: hide_key(format!("reading the answer failed: {error}")) };
    }
    if (200..300).contains(&status) {
        return ChannelTestOutcome { ok: true, status, latency_ms, message: "the upstream answered".to_string() };
    }
    let detail = crate::protocol::error::parse_upstream_error(channel_format(channel.channel_type), status, &answer).message;
    ChannelTestOutcome { ok: false, status, latency_ms, message: hide_key(format!("the upstream answered {status}: {detail}")) }
}

/// The smallest useful generation request in the channel's format.
fn test_body(channel_type: ChannelType, model: &str) -> Value {
    let messages = json!([{"role": "user", "content": TEST_PROMPT}]);
    match channel_type {
        ChannelType::OpenaiChat => json!({"model": model, "messages": messages, "max_tokens": TEST_MAX_TOKENS}),
        ChannelType::OpenaiResponses => json!({"model": model, "input": TEST_PROMPT, "max_output_tokens": TEST_MAX_TOKENS}),
        ChannelType::Anthropic => json!({"model": model, "messages": messages, "max_tokens": TEST_MAX_TOKENS}),
        ChannelType::Gemini | ChannelType::Antigravity => json!({
            "contents": [{"role": "user", "parts": [{"text": TEST_PROMPT}]}],
            "generationConfig": {"maxOutputTokens": TEST_MAX_TOKENS},
        }),
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}
