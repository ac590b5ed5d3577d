//! Embeddings: OpenAI's `POST /v1/embeddings` shape, and its conversion to and from Gemini's
//! `batchEmbedContents`.
//!
//! OpenAI request: `{model, input: string | [string] | [int] | [[int]], encoding_format?,
//! dimensions?, user?}`; answer: `{object:"list", data:[{object:"embedding", index, embedding}],
//! model, usage:{prompt_tokens, total_tokens}}`. Gemini request: `{requests:[{model:"models/m",
//! content:{parts:[{text}]}, outputDimensionality?}]}`; answer: `{embeddings:[{values:[...]}]}`,
//! with no token usage. OpenAI channels get the client's body with only the model rewritten;
//! Gemini has no token-id input, so token arrays can only go to OpenAI channels.

use serde_json::{json, Map, Value};

use crate::util::base64_encode;

/// What the relay needs to know about a client's embeddings request.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingsRequest {
    /// The group the client asked for.
    pub model: String,
    /// The inputs as text, or None when the client sent token ids.
    pub texts: Option<Vec<String>>,
    /// `encoding_format: "base64"`: vectors as base64 of little-endian float32s.
    pub base64: bool,
    /// `dimensions`, when given.
    pub dimensions: Option<u64>,
}

/// Reads and checks the client's body. The error is a message for a 400.
pub fn parse_request(body: &Value) -> Result<EmbeddingsRequest, String> {
    let object = body.as_object().ok_or_else(|| "the request body must be a JSON object".to_string())?;
    let model = object
        .get("model")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|model| !model.is_empty())
        .ok_or_else(|| "the request must name a model (a group name)".to_string())?
        .to_string();
    let texts = match object.get("input") {
        Some(Value::String(text)) => Some(vec![text.clone()]),
        Some(Value::Array(items)) if items.is_empty() => return Err("input must not be empty".to_string()),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            Some(items.iter().filter_map(Value::as_str).map(str::to_string).collect())
        }
        Some(Value::Array(items)) if items.iter().all(is_token_input) => None,
        _ => return Err("input must be a string, an array of strings, or token ids (an array of integers or of integer arrays)".to_string()),
    };
    let base64 = match object.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(format)) if format == "float" => false,
        Some(Value::String(format)) if format == "base64" => true,
        Some(_) => return Err("encoding_format must be \"float\" or \"base64\"".to_string()),
    };
    let dimensions = match object.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(value) => Some(value.as_u64().filter(|dimensions| *dimensions > 0).ok_or_else(|| "dimensions must be a positive integer".to_string())?),
    };
    Ok(EmbeddingsRequest { model, texts, base64, dimensions })
}

/// The client's body for an OpenAI-type upstream: unchanged but for the model.
pub fn openai_upstream_body(body: &Value, upstream_model: &str) -> Vec<u8> {
    let mut body = body.clone();
    if let Some(object) = body.as_object_mut() {
        object.insert("model".to_string(), Value::String(upstream_model.to_string()));
    }
    serde_json::to_vec(&body).unwrap_or_default()
}

/// `usage.prompt_tokens` of an OpenAI embeddings answer.
pub fn openai_prompt_tokens(body: &[u8]) -> Option<u64> {
    let body: Value = serde_json::from_slice(body).ok()?;
    body.get("usage")?.get("prompt_tokens")?.as_u64()
}

/// The `batchEmbedContents` body for texts embedded with `upstream_model`.
pub fn gemini_request(texts: &[String], upstream_model: &str, dimensions: Option<u64>) -> Vec<u8> {
    let model = format!("models/{}", upstream_model.strip_prefix("models/").unwrap_or(upstream_model));
    let requests: Vec<Value> = texts
        .iter()
        .map(|text| {
            let mut request = Map::new();
            request.insert("model".to_string(), Value::String(model.clone()));
            request.insert("content".to_string(), json!({"parts": [{"text": text}]}));
            if let Some(dimensions) = dimensions {
                request.insert("outputDimensionality".to_string(), json!(dimensions));
            }
            Value::Object(request)
        })
        .collect();
    serde_json::to_vec(&json!({"requests": requests})).unwrap_or_default()
}

/// Turns a `batchEmbedContents` answer into OpenAI's list. `prompt_tokens` is the caller's
/// estimate, since Gemini reports none. The error is a message for a 502.
pub fn openai_response_from_gemini(body: &[u8], response_model: &str, prompt_tokens: u64, base64: bool) -> Result<Vec<u8>, String> {
    let body: Value = serde_json::from_slice(body).map_err(|error| format!("the upstream answer is not JSON: {error}"))?;
    let embeddings = body
        .get("embeddings")
        .and_then(Value::as_array)
        .ok_or_else(|| "the upstream answer has no embeddings list".to_string())?;
    let mut data = Vec::with_capacity(embeddings.len());
    for (index, embedding) in embeddings.iter().enumerate() {
        let values = embedding
            .get("values")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("embedding {index} of the upstream answer has no values"))?;
        let numbers: Vec<f64> = values
            .iter()
            .map(|value| value.as_f64().ok_or_else(|| format!("embedding {index} of the upstream answer holds a value that is not a number")))
            .collect::<Result<_, _>>()?;
        let vector = if base64 { Value::String(float32_base64(&numbers)) } else { json!(numbers) };
        data.push(json!({"object": "embedding", "index": index, "embedding": vector}));
    }
    let answer = json!({
        "object": "list",
        "data": data,
        "model": response_model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    });
    serde_json::to_vec(&answer).map_err(|error| format!("the answer could not be written: {error}"))
}

fn is_token_input(item: &Value) -> bool {
    item.is_u64() || item.as_array().is_some_and(|tokens| !tokens.is_empty() && tokens.iter().all(Value::is_u64))
}

/// OpenAI's base64 encoding: the vector's float32s, little-endian, one after another.
fn float32_base64(numbers: &[f64]) -> String {
    let bytes: Vec<u8> = numbers.iter().flat_map(|number| (*number as f32).to_le_bytes()).collect();
    base64_encode(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_shape_is_read() {
        let single = parse_request(&json!({"model": "emb", "input": "hello"})).unwrap();
        assert_eq!(single, EmbeddingsRequest { model: "emb".to_string(), texts: Some(vec!["hello".to_string()]), base64: false, dimensions: None });
        let many = parse_request(&json!({"model": "emb", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 8})).unwrap();
        assert_eq!(many.texts, Some(vec!["a".to_string(), "b".to_string()]));
        assert!(many.base64);
        assert_eq!(many.dimensions, Some(8));
        assert_eq!(parse_request(&json!({"model": "emb", "input": [1, 2, 3]})).unwrap().texts, None);
        assert_eq!(parse_request(&json!({"model": "emb", "input": [[1, 2], [3]]})).unwrap().texts, None);
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        assert!(parse_request(&json!({"input": "x"})).unwrap_err().contains("model"));
        assert!(parse_request(&json!({"model": "emb"})).unwrap_err().contains("input"));
        assert!(parse_request(&json!({"model": "emb", "input": []})).unwrap_err().contains("empty"));
        assert!(parse_request(&json!({"model": "emb", "input": ["a", 1]})).unwrap_err().contains("input"));
        assert!(parse_request(&json!({"model": "emb", "input": "a", "encoding_format": "int8"})).unwrap_err().contains("encoding_format"));
        assert!(parse_request(&json!({"model": "emb", "input": "a", "dimensions": 0})).unwrap_err().contains("dimensions"));
        assert!(parse_request(&json!(["not an object"])).is_err());
    }

    #[test]
    fn openai_bodies_pass_through_with_the_model_rewritten() {
        let body = json!({"model": "group", "input": ["a"], "dimensions": 4, "user": "u1"});
        let sent: Value = serde_json::from_slice(&openai_upstream_body(&body, "text-embedding-3-small")).unwrap();
        assert_eq!(sent, json!({"model": "text-embedding-3-small", "input": ["a"], "dimensions": 4, "user": "u1"}));
        assert_eq!(openai_prompt_tokens(br#"{"usage":{"prompt_tokens":5,"total_tokens":5}}"#), Some(5));
        assert_eq!(openai_prompt_tokens(b"{}"), None);
    }

    #[test]
    fn gemini_requests_and_answers_convert() {
        let request: Value = serde_json::from_slice(&gemini_request(&["a".to_string(), "b".to_string()], "text-embedding-004", Some(3))).unwrap();
        assert_eq!(
            request,
            json!({"requests": [
                {"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 3},
                {"model": "models/text-embedding-004", "content": {"parts": [{"text": "b"}]}, "outputDimensionality": 3},
            ]})
        );
        let answer = br#"{"embeddings":[{"values":[0.5,-1]},{"values":[2]}]}"#;
        let converted: Value = serde_json::from_slice(&openai_response_from_gemini(answer, "text-embedding-004", 7, false).unwrap()).unwrap();
        assert_eq!(
            converted,
            json!({
                "object": "list",
                "data": [
                    {"object": "embedding", "index": 0, "embedding": [0.5, -1.0]},
                    {"object": "embedding", "index": 1, "embedding": [2.0]},
                ],
                "model": "text-embedding-004",
                "usage": {"prompt_tokens": 7, "total_tokens": 7},
            })
        );
    }

    #[test]
    fn base64_vectors_are_little_endian_float32() {
        let converted: Value =
            serde_json::from_slice(&openai_response_from_gemini(br#"{"embeddings":[{"values":[1.0]}]}"#, "m", 1, true).unwrap()).unwrap();
        // 1.0f32 is 0x3F800000, little-endian 00 00 80 3F.
        assert_eq!(converted["data"][0]["embedding"], "AACAPw==");
    }

    #[test]
    fn malformed_gemini_answers_are_errors() {
        assert!(openai_response_from_gemini(b"not json", "m", 1, false).is_err());
        assert!(openai_response_from_gemini(br#"{"embeddings":[{"values":["x"]}]}"#, "m", 1, false).is_err());
        assert!(openai_response_from_gemini(br#"{"other":1}"#, "m", 1, false).is_err());
    }
}
