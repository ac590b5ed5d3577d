//! Assembling one complete response from stream events, for upstreams that answer best (or only)
//! as a stream while the client asked for a single JSON answer (Antigravity).

use std::collections::HashMap;

use crate::protocol::ir::{ConvertError, FinishReason, Part, Reasoning, Response, Signature, StreamEvent, ToolCall};

/// The response the events describe, parts in the order they began. An `Error` event is returned
/// as a ConvertError (the upstream failed mid-answer), and a stream without a `Finish` ends as
/// `Stop` when it produced anything.
pub fn response_from_events(events: &[StreamEvent]) -> Result<Response, ConvertError> {
    let mut response = Response { id: String::new(), model: String::new(), parts: Vec::new(), finish_reason: FinishReason::Stop, usage: None };
    let mut tool_positions: HashMap<usize, usize> = HashMap::new();
    let mut finished = false;
    for event in events {
        match event {
            StreamEvent::Start { id, model } => {
                response.id = id.clone();
                response.model = model.clone();
            }
            StreamEvent::TextDelta(text) => match response.parts.last_mut() {
                Some(Part::Text(last)) => last.text.push_str(text),
                _ => response.parts.push(Part::text(text.clone())),
            },
            StreamEvent::ReasoningDelta(text) => match response.parts.last_mut() {
                Some(Part::Reasoning(last)) if !last.redacted => last.text.push_str(text),
                _ => response.parts.push(Part::Reasoning(Reasoning { text: text.clone(), signature: None, redacted: false })),
            },
            StreamEvent::ReasoningSignature { provider, signature } => {
                let value = Signature { provider: *provider, value: signature.clone() };
                match response.parts.iter_mut().rev().find_map(|part| match part {
                    Part::Reasoning(reasoning) => Some(reasoning),
                    _ => None,
                }) {
                    Some(reasoning) => reasoning.signature = Some(value),
                    // A signature with no thinking text (Gemini puts one on plain text): keep it
                    // as an empty reasoning part so it can travel back to its provider.
                    None => response.parts.push(Part::Reasoning(Reasoning { text: String::new(), signature: Some(value), redacted: false })),
                }
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                tool_positions.insert(*index, response.parts.len());
                response.parts.push(Part::ToolCall(ToolCall { id: id.clone(), name: name.clone(), arguments: String::new(), signature: None }));
            }
            StreamEvent::ToolCallArgsDelta { index, fragment } => {
                let position = tool_positions.get(index).copied().ok_or_else(|| {
                    ConvertError::new("", format!("arguments for tool call {index} arrived before the call"))
                })?;
                if let Some(Part::ToolCall(call)) = response.parts.get_mut(position) {
                    call.arguments.push_str(fragment);
                }
            }
            StreamEvent::ToolCallEnd { .. } => {}
            StreamEvent::Finish { reason } => {
                response.finish_reason = *reason;
                finished = true;
            }
            StreamEvent::Usage(usage) => response.usage = Some(*usage),
            StreamEvent::Error { message, .. } => {
                return Err(ConvertError::new("", format!("the upstream failed mid-answer: {message}")));
            }
        }
    }
    if !finished && response.parts.is_empty() {
        return Err(ConvertError::new("", "the upstream stream ended without an answer"));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::usage::Usage;

    #[test]
    fn text_reasoning_and_tool_calls_are_assembled_in_order() {
        let usage = Usage { input_tokens: 10, output_tokens: 5, ..Usage::default() };
        let events = vec![
            StreamEvent::Start { id: "r1".into(), model: "m".into() },
            StreamEvent::ReasoningDelta("Let me ".into()),
            StreamEvent::ReasoningDelta("think.".into()),
            StreamEvent::TextDelta("Hello".into()),
            StreamEvent::TextDelta(" there".into()),
            StreamEvent::ToolCallStart { index: 0, id: "call_1".into(), name: "get_weather".into() },
            StreamEvent::ToolCallArgsDelta { index: 0, fragment: "{\"city\":".into() },
            StreamEvent::ToolCallArgsDelta { index: 0, fragment: "\"Paris\"}".into() },
            StreamEvent::ToolCallEnd { index: 0 },
            StreamEvent::Finish { reason: FinishReason::ToolCalls },
            StreamEvent::Usage(usage),
        ];
        let response = response_from_events(&events).unwrap();
        assert_eq!(response.id, "r1");
        assert_eq!(response.parts.len(), 3);
        assert!(matches!(&response.parts[0], Part::Reasoning(reasoning) if reasoning.text == "Let me think."));
        assert!(matches!(&response.parts[1], Part::Text(text) if text.text == "Hello there"));
        assert!(matches!(&response.parts[2], Part::ToolCall(call) if call.arguments == "{\"city\":\"Paris\"}" && call.name == "get_weather"));
        assert_eq!(response.finish_reason, FinishReason::ToolCalls);
        assert_eq!(response.usage, Some(usage));
    }

    #[test]
    fn errors_and_empty_streams_are_conversion_errors() {
        let failed = [StreamEvent::TextDelta("Hel".into()), StreamEvent::Error { kind: crate::protocol::error::ErrorKind::Overloaded, message: "busy".into() }];
        assert!(response_from_events(&failed).unwrap_err().message.contains("busy"));
        assert!(response_from_events(&[]).is_err());
        let unfinished = response_from_events(&[StreamEvent::TextDelta("partial".into())]).unwrap();
        assert_eq!(unfinished.finish_reason, FinishReason::Stop);
    }
}
