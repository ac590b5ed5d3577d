//! Reading providers' model-list answers (for model sync): ids and the next page marker.

use serde_json::Value;

use crate::protocol::Format;

/// One page of a provider's model list.
#[derive(Debug, PartialEq)]
pub struct ModelPage {
    pub ids: Vec<String>,
    /// What to ask for next: Anthropic's `after_id` value or Gemini's `pageToken`; None at the end.
    pub next_page: Option<String>,
}

/// Parses a models-list body. OpenAI-style `{data:[{id}]}`, Anthropic `{data:[{id}], has_more,
/// last_id}`, Gemini `{models:[{name:"models/x"}], nextPageToken}` (the `models/` prefix is
/// stripped) and Antigravity's map `{models:{"id":{...}}}`.
pub fn parse_model_page(format: Format, body: &[u8]) -> Result<ModelPage, String> {
    let value: Value = serde_json::from_slice(body).map_err(|error| format!("the model list is not JSON: {error}"))?;
    let ids_from_data = |value: &Value| -> Vec<String> {
        value
            .get("data")
            .and_then(Value::as_array)
            .map(|items| items.iter().filter_map(|item| item.get("id").and_then(Value::as_str)).map(str::to_string).collect())
            .unwrap_or_default()
    };
    let page = match format {
        Format::OpenaiChat | Format::OpenaiResponses => ModelPage { ids: ids_from_data(&value), next_page: None },
        Format::Anthropic => {
            let has_more = value.get("has_more").and_then(Value::as_bool).unwrap_or(false);
            let last_id = value.get("last_id").and_then(Value::as_str).map(str::to_string);
            ModelPage { ids: ids_from_data(&value), next_page: if has_more { last_id } else { None } }
        }
        Format::Gemini => ModelPage {
            ids: value
                .get("models")
                .and_then(Value::as_array)
                .map(|models| {
                    models
                        .iter()
                        .filter_map(|model| model.get("name").and_then(Value::as_str))
                        .map(|name| name.strip_prefix("models/").unwrap_or(name).to_string())
                        .collect()
                })
                .unwrap_or_default(),
            next_page: value.get("nextPageToken").and_then(Value::as_str).filter(|token| !token.is_empty()).map(str::to_string),
        },
        Format::Antigravity => ModelPage {
            ids: value.get("models").and_then(Value::as_object).map(|models| models.keys().cloned().collect()).unwrap_or_default(),
            next_page: None,
        },
    };
    if page.ids.is_empty() && value.get("data").is_none() && value.get("models").is_none() {
        return Err("the answer has no model list".to_string());
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shape_yields_ids_and_paging() {
        let openai = br#"{"object":"list","data":[{"id":"gpt-4o","object":"model"},{"id":"gpt-4o-mini"}]}"#;
        assert_eq!(parse_model_page(Format::OpenaiChat, openai).unwrap(), ModelPage { ids: vec!["gpt-4o".into(), "gpt-4o-mini".into()], next_page: None });
        let anthropic = br#"{"data":[{"type":"model","id":"claude-a"}],"has_more":true,"first_id":"claude-a","last_id":"claude-a"}"#;
        assert_eq!(parse_model_page(Format::Anthropic, anthropic).unwrap().next_page.as_deref(), Some("claude-a"));
        let gemini = br#"{"models":[{"name":"models/gemini-2.5-pro"}],"nextPageToken":"abc"}"#;
        let page = parse_model_page(Format::Gemini, gemini).unwrap();
        assert_eq!(page.ids, vec!["gemini-2.5-pro".to_string()]);
        assert_eq!(page.next_page.as_deref(), Some("abc"));
        let antigravity = br#"{"models":{"claude-sonnet-4-5":{"displayName":"x"}}}"#;
        assert_eq!(parse_model_page(Format::Antigravity, antigravity).unwrap().ids, vec!["claude-sonnet-4-5".to_string()]);
        assert!(parse_model_page(Format::OpenaiChat, b"<html>").is_err());
        assert!(parse_model_page(Format::OpenaiChat, b"{\"error\":{}}").is_err());
    }
}
