//! Embeddings: with an even first input byte the rest is a client's `POST /v1/embeddings` body
//! (read, then written for OpenAI and Gemini upstreams); with an odd one it is an upstream answer
//! (OpenAI usage, Gemini `batchEmbedContents` turned into OpenAI's list, floats or base64).
#![no_main]

use libfuzzer_sys::fuzz_target;
use octopus::protocol::embeddings;

fuzz_target!(|data: &[u8]| {
    let [mode, body @ ..] = data else { return };
    if mode % 2 == 0 {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
            return;
        };
        let Ok(request) = embeddings::parse_request(&value) else {
            return;
        };
        let _ = embeddings::openai_upstream_body(&value, "fuzz-model");
        if let Some(texts) = &request.texts {
            let written =
                embeddings::gemini_request(texts, "models/fuzz-model", request.dimensions);
            assert!(
                serde_json::from_slice::<serde_json::Value>(&written).is_ok(),
                "the Gemini request is not JSON"
            );
        }
    } else {
        let _ = embeddings::openai_prompt_tokens(body);
        for base64 in [false, true] {
            if let Ok(written) = embeddings::openai_response_from_gemini(
                body,
                "fuzz-model",
                u64::from(*mode),
                base64,
            ) {
                assert!(
                    serde_json::from_slice::<serde_json::Value>(&written).is_ok(),
                    "the OpenAI answer is not JSON"
                );
            }
        }
    }
});
