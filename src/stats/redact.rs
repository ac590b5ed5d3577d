//! Bodies kept in request logs: image data and secrets taken out, then cut to the size limit.
//!
//! Pure. JSON bodies (and each `data:` line of an SSE body) are walked value by value; anything
//! else is kept as text and only cut.

use serde_json::Value;

/// Object keys whose string values are secrets wherever they appear.
const SECRET_KEYS: [&str; 10] = [
    "api_key",
    "apikey",
    "authorization",
    "x-api-key",
    "x-goog-api-key",
    "access_token",
    "refresh_token",
    "password",
    "client_secret",
    "secret",
];

/// Base64 strings at least this long under a `data` key are taken for media.
const MIN_MEDIA_DATA_CHARS: usize = 128;

/// The body as it is kept in a log: redacted, then cut to `limit` bytes (on a character boundary)
/// with a note of how much was cut.
pub fn body_for_log(body: &[u8], limit: usize) -> String {
    let text = String::from_utf8_lossy(body);
    let redacted = match serde_json::from_str::<Value>(&text) {
        Ok(mut value) => {
            redact_value(&mut value);
            value.to_string()
        }
        Err(_) => text.lines().map(redact_sse_line).collect::<Vec<_>>().join("\n"),
    };
    cut(redacted, limit)
}

fn redact_sse_line(line: &str) -> String {
    let Some(payload) = line.strip_prefix("data:") else { return line.to_string() };
    match serde_json::from_str::<Value>(payload.trim_start()) {
        Ok(mut value) => {
            redact_value(&mut value);
            format!("data: {value}")
        }
        Err(_) => line.to_string(),
    }
}

fn redact_value(value: &mut Value) {
    match value {
        Value::String(text) => {
            if let Some(replacement) = data_url_replacement(text) {
                *text = replacement;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_value),
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                let lower = key.to_ascii_lowercase();
                if SECRET_KEYS.contains(&lower.as_str()) && child.is_string() {
                    *child = Value::String("[redacted]".to_string());
                } else if lower == "data" && child.as_str().is_some_and(looks_like_base64_media) {
                    let length = child.as_str().map_or(0, str::len);
                    *child = Value::String(format!("[base64 data, {length} characters]"));
                } else {
                    redact_value(child);
                }
            }
        }
        _ => {}
    }
}

fn data_url_replacement(text: &str) -> Option<String> {
    let rest = text.strip_prefix("data:")?;
    let (media_type, data) = rest.split_once(";base64,")?;
    Some(format!("data:{media_type};base64,[{} characters]", data.len()))
}

fn looks_like_base64_media(text: &str) -> bool {
    text.len() >= MIN_MEDIA_DATA_CHARS
        && text.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'/' | b'=' | b'-' | b'_'))
}

fn cut(mut text: String, limit: usize) -> String {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut_bytes = text.len() - end;
    text.truncate(end);
    text.push_str(&format!("…[{cut_bytes} more bytes not kept]"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_and_secrets_are_taken_out() {
        let image = "A".repeat(400);
        let body = format!(
            r#"{{"messages":[{{"content":[{{"type":"image_url","image_url":{{"url":"data:image/png;base64,{image}"}}}},
               {{"type":"image","source":{{"type":"base64","media_type":"image/png","data":"{image}"}}}}]}}],
               "api_key":"sk-live-secret","Authorization":"Bearer x"}}"#
        );
        let kept = body_for_log(body.as_bytes(), 10_000);
        assert!(!kept.contains(&image), "{kept}");
        assert!(!kept.contains("sk-live-secret"));
        assert!(!kept.contains("Bearer x"));
        assert!(kept.contains("data:image/png;base64,[400 characters]"), "{kept}");
        assert!(kept.contains("[base64 data, 400 characters]"), "{kept}");
    }

    #[test]
    fn sse_lines_are_redacted_one_by_one_and_bodies_are_cut() {
        let image = "B".repeat(300);
        let body = format!("event: x\ndata: {{\"inlineData\":{{\"data\":\"{image}\"}}}}\n\ndata: [DONE]\n");
        let kept = body_for_log(body.as_bytes(), 10_000);
        assert!(!kept.contains(&image));
        assert!(kept.contains("data: [DONE]"));
        let cut = body_for_log("ééééé".as_bytes(), 3);
        assert!(cut.starts_with('é') && cut.contains("more bytes not kept"), "{cut}");
    }
}
