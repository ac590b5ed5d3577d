//! Pure wire-format code (no IO): the internal representation and one module per provider format.
//!
//! Architecture invariant: nothing under `protocol/` opens sockets or files, reads clocks or draws
//! random numbers. Ids and timestamps come from the caller, so every conversion is a pure function
//! of its inputs and can be tested byte for byte.

pub mod anthropic;
pub mod antigravity;
pub mod collect;
pub mod convert;
pub mod custom_tools;
pub mod embeddings;
pub mod error;
pub mod gemini;
pub mod models_list;
pub mod ir;
pub mod json_schema;
pub mod json_writer;
pub mod openai_chat;
pub mod openai_responses;
pub mod raw_json;
pub mod sse;
pub mod typed_read;
pub mod stream_end;
pub mod usage;

mod json;

#[cfg(test)]
mod testkit;

/// The wire formats the gateway speaks, as a client-facing protocol or as an upstream channel type.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Format {
    /// OpenAI Chat Completions (`POST /v1/chat/completions`).
    OpenaiChat,
    /// OpenAI Responses (`POST /v1/responses`).
    OpenaiResponses,
    /// Anthropic Messages (`POST /v1/messages`).
    Anthropic,
    /// Google Gemini `generateContent` / `streamGenerateContent?alt=sse`.
    Gemini,
    /// Google Cloud Code `v1internal` envelope around Gemini (upstream only).
    Antigravity,
}

impl Format {
    /// The channel-type name used in configuration and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::OpenaiChat => "openai_chat",
            Format::OpenaiResponses => "openai_responses",
            Format::Anthropic => "anthropic",
            Format::Gemini => "gemini",
            Format::Antigravity => "antigravity",
        }
    }

    /// The format with the given channel-type name, the inverse of [`Format::as_str`].
    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "openai_chat" => Some(Format::OpenaiChat),
            "openai_responses" => Some(Format::OpenaiResponses),
            "anthropic" => Some(Format::Anthropic),
            "gemini" => Some(Format::Gemini),
            "antigravity" => Some(Format::Antigravity),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::protocol::Format;

    #[test]
    fn format_names_match_channel_types() {
        let all = [
            Format::OpenaiChat,
            Format::OpenaiResponses,
            Format::Anthropic,
            Format::Gemini,
            Format::Antigravity,
        ];
        let names: Vec<&str> = all.iter().map(|format| format.as_str()).collect();
        assert_eq!(
            names,
            [
                "openai_chat",
                "openai_responses",
                "anthropic",
                "gemini",
                "antigravity"
            ]
        );
        for format in all {
            assert_eq!(Format::from_name(format.as_str()), Some(format));
        }
        assert_eq!(Format::from_name("openai"), None);
    }
}
