//! OpenAI Responses `custom` tools (free-form input, often constrained by a grammar) carried
//! through formats that only know JSON function tools.
//!
//! Codex's `apply_patch` is the custom tool that matters: `{"type": "custom", "name",
//! "description", "format": {"type": "grammar", "syntax": "lark", "definition"}}`, called with a
//! `custom_tool_call` item whose `input` is the patch text. Every other format takes tool
//! arguments as a JSON object, so on the way to another upstream a custom tool becomes a function
//! tool with one required string parameter, [`INPUT_PARAMETER`], whose description carries the
//! tool's own description and the grammar; a call of it coming back becomes a `custom_tool_call`
//! again with that string as its `input` (the writers look the tool's name up in the client's
//! custom tools, [`custom_tool_names`]). History items (`custom_tool_call`,
//! `custom_tool_call_output`) map to ordinary calls and results, with the input wrapped as
//! `{"input": ...}` so that the upstream sees calls that match the definition it was given.
//!
//! Streams: a call's JSON argument fragments are decoded as they arrive by
//! [`StreamingInputDecoder`], so the client gets `response.custom_tool_call_input.delta` events
//! with the free-form text while the model is still writing it.

use serde_json::{Map, Value, json};

/// The one parameter of the function tool a custom tool becomes.
pub const INPUT_PARAMETER: &str = "input";

/// The JSON schema of the function tool a custom tool becomes.
pub fn input_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            INPUT_PARAMETER: {
                "type": "string",
                "description": "The tool's whole input as free-form text (not JSON), exactly as the tool description asks for it.",
            }
        },
        "required": [INPUT_PARAMETER],
        "additionalProperties": false,
    })
}

/// The description of the function tool a custom tool becomes: the tool's description, then how
/// to pass the input, then the grammar or format the input must follow. Models read tool
/// descriptions, so this is where a grammar they cannot be held to still guides them.
pub fn function_description(description: Option<&str>, format: Option<&Value>) -> String {
    let mut text = String::new();
    if let Some(description) = description.filter(|description| !description.is_empty()) {
        text.push_str(description);
        text.push_str("\n\n");
    }
    // Custom tool descriptions often say "do not wrap the input in JSON"; this line says how
    // that applies to the function the model is now given.
    text.push_str(
        "Call this tool with one string argument, `input`, holding the whole free-form input; \
         the tool receives that text unchanged.",
    );
    // `text` (unconstrained) and formats this gateway does not know add nothing: the lines above
    // already say what to send.
    if let Some(format) = format
        && format.get("type").and_then(Value::as_str) == Some("grammar")
        && let Some(definition) = format.get("definition").and_then(Value::as_str)
    {
        let syntax = format
            .get("syntax")
            .and_then(Value::as_str)
            .unwrap_or("lark");
        text.push_str(&format!(
            " The input must be valid in this {syntax} grammar:\n\n{definition}"
        ));
    }
    text
}

/// The names of the custom tools in a Responses request body, in order; empty for any other
/// body. Response writers turn calls of these names into `custom_tool_call` items.
pub fn custom_tool_names(body: &Value) -> Vec<String> {
    let Some(tools) = body.get("tools").and_then(Value::as_array) else {
        return Vec::new();
    };
    tools
        .iter()
        .filter(|tool| tool.get("type").and_then(Value::as_str) == Some("custom"))
        .filter_map(|tool| tool.get("name").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

/// The IR arguments (a JSON string) of a call whose free-form input is `input`.
pub fn arguments_for_input(input: &str) -> String {
    let mut object = Map::new();
    object.insert(INPUT_PARAMETER.into(), input.into());
    Value::Object(object).to_string()
}

/// The free-form input in the JSON arguments a model produced for a custom tool. The `input`
/// string when there is one; else the only string value of an object (a model that named the
/// parameter differently); else the arguments as they are, since text that is not the expected
/// JSON is more likely the input itself than anything else.
pub fn input_from_arguments(arguments: &str) -> String {
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(object)) => {
            if let Some(Value::String(input)) = object.get(INPUT_PARAMETER) {
                return input.clone();
            }
            let mut strings = object.values().filter_map(Value::as_str);
            match (strings.next(), strings.next()) {
                (Some(only), None) => only.to_string(),
                _ => arguments.to_string(),
            }
        }
        Ok(Value::String(input)) => input,
        _ => arguments.to_string(),
    }
}

/// Decodes the `input` string out of JSON argument fragments as they stream in, so that its
/// text can be forwarded before the arguments are complete. It follows only the shape a model
/// given [`input_schema`] writes, `{"input": "..."}` (whitespace allowed); anything else stops
/// it, and the caller takes the input from the complete arguments instead.
#[derive(Default)]
pub struct StreamingInputDecoder {
    state: DecoderState,
    /// Characters of the object's opening, `{"input":"`, not yet matched.
    opening: String,
    /// The hex digits of a `\u` escape read so far.
    unicode: String,
    /// A high surrogate waiting for its low half.
    high_surrogate: Option<u32>,
}

#[derive(Default, PartialEq, Eq, Clone, Copy, Debug)]
enum DecoderState {
    /// Reading `{"input":"`.
    #[default]
    Opening,
    InString,
    /// After a backslash.
    Escape,
    /// Inside the four hex digits of `\uXXXX`.
    Unicode,
    /// The closing quote was read.
    Done,
    /// The arguments do not have the expected shape.
    Failed,
}

impl StreamingInputDecoder {
    pub fn new() -> StreamingInputDecoder {
        StreamingInputDecoder::default()
    }

    /// Whether the fragments so far had an unexpected shape; the streamed text is then
    /// incomplete and the complete arguments decide the input.
    pub fn failed(&self) -> bool {
        self.state == DecoderState::Failed
    }

    /// Feeds one argument fragment; returns the input text it completes (possibly empty).
    pub fn push(&mut self, fragment: &str) -> String {
        let mut decoded = String::new();
        for character in fragment.chars() {
            match self.state {
                DecoderState::Opening => self.opening_character(character),
                DecoderState::InString => match character {
                    '\\' => self.state = DecoderState::Escape,
                    '"' => {
                        self.flush_surrogate(&mut decoded);
                        self.state = DecoderState::Done;
                    }
                    other => {
                        self.flush_surrogate(&mut decoded);
                        decoded.push(other);
                    }
                },
                DecoderState::Escape => {
                    self.state = DecoderState::InString;
                    let simple = match character {
                        'n' => Some('\n'),
                        't' => Some('\t'),
                        'r' => Some('\r'),
                        'b' => Some('\u{8}'),
                        'f' => Some('\u{c}'),
                        '"' | '\\' | '/' => Some(character),
                        'u' => {
                            self.unicode.clear();
                            self.state = DecoderState::Unicode;
                            None
                        }
                        _ => {
                            self.state = DecoderState::Failed;
                            None
                        }
                    };
                    if let Some(simple) = simple {
                        self.flush_surrogate(&mut decoded);
                        decoded.push(simple);
                    }
                }
                DecoderState::Unicode => {
                    if !character.is_ascii_hexdigit() {
                        self.state = DecoderState::Failed;
                        continue;
                    }
                    self.unicode.push(character);
                    if self.unicode.len() == 4 {
                        self.state = DecoderState::InString;
                        let unit = u32::from_str_radix(&self.unicode, 16)
                            .expect("four hex digits were checked");
                        self.unicode_unit(unit, &mut decoded);
                    }
                }
                DecoderState::Done | DecoderState::Failed => break,
            }
        }
        decoded
    }

    fn opening_character(&mut self, character: char) {
        // What is still expected of `{"input":"`, whitespace allowed between the JSON tokens.
        const OPENING: &str = "{\"input\":\"";
        let matched = self.opening.len();
        let expected = OPENING[matched..].chars().next();
        let between_tokens = matched == 0 || matched == 1 || matched == 8 || matched == 9;
        if Some(character) == expected {
            self.opening.push(character);
            if self.opening.len() == OPENING.len() {
                self.state = DecoderState::InString;
            }
        } else if !(character.is_whitespace() && between_tokens) {
            self.state = DecoderState::Failed;
        }
    }

    fn unicode_unit(&mut self, unit: u32, decoded: &mut String) {
        match unit {
            0xD800..=0xDBFF => {
                self.flush_surrogate(decoded);
                self.high_surrogate = Some(unit);
            }
            0xDC00..=0xDFFF => match self.high_surrogate.take() {
                Some(high) => {
                    let combined = 0x10000 + ((high - 0xD800) << 10) + (unit - 0xDC00);
                    decoded.push(char::from_u32(combined).unwrap_or('\u{FFFD}'));
                }
                None => decoded.push('\u{FFFD}'),
            },
            other => {
                self.flush_surrogate(decoded);
                decoded.push(char::from_u32(other).unwrap_or('\u{FFFD}'));
            }
        }
    }

    /// A high surrogate not followed by its low half is replaced, as JSON parsers do.
    fn flush_surrogate(&mut self, decoded: &mut String) {
        if self.high_surrogate.take().is_some() {
            decoded.push('\u{FFFD}');
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::protocol::custom_tools::{
        StreamingInputDecoder, arguments_for_input, function_description, input_from_arguments,
    };

    /// Feeds `arguments` split at every character boundary in turn and checks that the decoded
    /// text is the same however the fragments fall.
    fn decode_split_everywhere(arguments: &str) -> Vec<(String, bool)> {
        let boundaries: Vec<usize> = arguments
            .char_indices()
            .map(|(position, _)| position)
            .chain([arguments.len()])
            .collect();
        boundaries
            .iter()
            .map(|&split| {
                let mut decoder = StreamingInputDecoder::new();
                let mut text = decoder.push(&arguments[..split]);
                text.push_str(&decoder.push(&arguments[split..]));
                (text, decoder.failed())
            })
            .collect()
    }

    #[test]
    fn streamed_input_matches_the_parsed_input_wherever_the_fragments_split() {
        let patch =
            "*** Begin Patch\n*** Add File: a.txt\n+\"quoted\" \\ tab\there é 😀\n*** End Patch\n";
        for arguments in [
            arguments_for_input(patch),
            json!({"input": patch}).to_string(),
            format!(" {{ \"input\" : {} }}", json!(patch)),
            // Escaped non-ASCII, as some upstreams send it, including a surrogate pair.
            "{\"input\":\"caf\\u00e9 \\ud83d\\ude00\\n\"}".to_string(),
        ] {
            let expected = input_from_arguments(&arguments);
            for (text, failed) in decode_split_everywhere(&arguments) {
                assert!(!failed, "{arguments}");
                assert_eq!(text, expected, "{arguments}");
            }
        }
        assert_eq!(
            input_from_arguments("{\"input\":\"caf\\u00e9 \\ud83d\\ude00\\n\"}"),
            "café 😀\n"
        );
    }

    #[test]
    fn other_shapes_stop_the_streaming_decoder_and_fall_back_on_the_whole_arguments() {
        for (arguments, input) in [
            ("{\"patch\":\"text\"}", "text"),
            ("{\"a\":1,\"input\":\"text\"}", "text"),
            ("not json at all", "not json at all"),
            ("{\"a\":1,\"b\":2}", "{\"a\":1,\"b\":2}"),
            ("\"a bare string\"", "a bare string"),
        ] {
            let mut decoder = StreamingInputDecoder::new();
            assert_eq!(decoder.push(arguments), "", "{arguments}");
            assert!(decoder.failed(), "{arguments}");
            assert_eq!(input_from_arguments(arguments), input, "{arguments}");
        }
    }

    #[test]
    fn the_description_carries_the_tool_description_and_its_grammar() {
        let format = json!({"type": "grammar", "syntax": "lark", "definition": "start: \"x\""});
        let description = function_description(Some("Edits files."), Some(&format));
        assert!(description.starts_with("Edits files.\n\n"), "{description}");
        assert!(description.contains("`input`"), "{description}");
        assert!(
            description.ends_with("lark grammar:\n\nstart: \"x\""),
            "{description}"
        );
        let plain = function_description(None, Some(&json!({"type": "text"})));
        assert!(
            plain.starts_with("Call this tool with one string"),
            "{plain}"
        );
    }
}
