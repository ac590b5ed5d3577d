//! The single plug-in point between the relay and format conversion (placeholder until the
//! IR converters land: every cross-format lane reports itself unsupported).

use std::fmt;

use crate::protocol::sse::SseEvent;
use crate::protocol::Format;

/// Per-request facts a converter needs but cannot know itself (no clocks or randomness here).
#[derive(Clone, Debug)]
pub struct ConvertContext {
    pub upstream_model: String,
    pub stream: bool,
    pub default_max_tokens: u32,
    pub response_id: String,
    pub created_unix: i64,
}

/// A conversion failure, naming the offending field.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvertError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConvertError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { write!(formatter, "{}", self.message) } else { write!(formatter, "{}: {}", self.path, self.message) }
    }
}

/// Whether requests in `client` format can be converted for an `upstream` channel.
pub fn supports(_client: Format, _upstream: Format) -> bool {
    false
}

fn unsupported(client: Format, upstream: Format) -> ConvertError {
    ConvertError { path: String::new(), message: format!("conversion from {} to {} is not available yet", client.as_str(), upstream.as_str()) }
}

pub fn convert_request(client: Format, upstream: Format, _body: &serde_json::Value, _context: &ConvertContext) -> Result<Vec<u8>, ConvertError> {
    Err(unsupported(client, upstream))
}

pub fn convert_response(upstream: Format, client: Format, _body: &[u8], _context: &ConvertContext) -> Result<Vec<u8>, ConvertError> {
    Err(unsupported(client, upstream))
}

/// Converts an upstream event stream into the client's format, event by event.
pub struct StreamTranscoder {
    upstream: Format,
    client: Format,
}

impl StreamTranscoder {
    pub fn new(upstream: Format, client: Format, _context: &ConvertContext) -> StreamTranscoder {
        StreamTranscoder { upstream, client }
    }

    pub fn push(&mut self, _event: &SseEvent, _out: &mut Vec<u8>) -> Result<(), ConvertError> {
        Err(unsupported(self.client, self.upstream))
    }

    pub fn finish(&mut self, _out: &mut Vec<u8>) {}
}
