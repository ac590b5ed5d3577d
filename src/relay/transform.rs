//! The one place where protocol conversion plugs into the relay: per attempt, either the body
//! passes through (same format on both sides) or it is converted through the IR.

use crate::protocol::Format;
use crate::relay::error::RelayError;
use crate::protocol::convert::{convert_request_with_media, needs_inline_images, ClientBody, ConvertContext};
use crate::relay::media_fetch::ImageFetcher;
use crate::relay::inbound::InboundCall;
use crate::relay::outbound::pass_through_body;

/// How one attempt's request, response and stream are transformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transform {
    /// Same format: forward bytes, only the model rewritten. `strip_usage_chunk` is set for
    /// OpenAI Chat streams where the gateway forced `include_usage` on behalf of a client that
    /// did not ask for it.
    PassThrough { format: Format, strip_usage_chunk: bool },
    /// Different formats: convert through the IR.
    Convert { client: Format, upstream: Format },
}

impl Transform {
    pub fn upstream_format(&self) -> Format {
        match self {
            Transform::PassThrough { format, .. } => *format,
            Transform::Convert { upstream, .. } => *upstream,
        }
    }
}

/// Whether requests from `client` can be served by an upstream speaking `upstream`.
pub fn can_serve(client: Format, upstream: Format) -> bool {
    client == upstream || crate::protocol::convert::supports(client, upstream)
}

/// Builds the upstream body for one attempt and the transform to apply to its answer. Image
/// URLs are downloaded and inlined for upstreams that cannot fetch them (Antigravity).
pub fn prepare_request(
    client: Format,
    upstream: Format,
    call: &InboundCall,
    upstream_model: &str,
    context: &ConvertContext,
    images: &mut ImageFetcher,
) -> Result<(Vec<u8>, Transform), RelayError> {
    if client == upstream {
        let (bytes, client_wants_usage) = pass_through_body(client, call, upstream_model);
        let strip_usage_chunk = client == Format::OpenaiChat && call.stream && !client_wants_usage;
        return Ok((bytes, Transform::PassThrough { format: client, strip_usage_chunk }));
    }
    let parse = || call.body();
    let body = match call.raw_body() {
        Some(bytes) => ClientBody::Bytes { bytes, parse: &parse },
        None => ClientBody::Parsed(call.body()),
    };
    let bytes = convert_request_with_media(client, upstream, body, context, &mut |url| images.fetch(url), needs_inline_images(upstream))
        .map_err(|error| RelayError::InvalidRequest(error.to_string()))?;
    Ok((bytes, Transform::Convert { client, upstream }))
}
