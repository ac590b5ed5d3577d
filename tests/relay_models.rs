//! The model lists clients read: `GET /v1/models` in the OpenAI shape, or the Anthropic shape for
//! Anthropic SDK requests, and `GET /v1beta/models` in the Gemini shape with paging; each lists
//! the groups the client key may call, and refuses a missing key in the matching shape.

mod support;

use serde_json::{Value, json};

use support::http_client::{TestResponse, request};
use support::lanes::{ANTHROPIC, AUTHENTICATION_ERROR, GEMINI, OPENAI_CHAT};
use support::relay_fixture::RelayFixture;

fn fixture_with_three_groups() -> RelayFixture {
    let fixture = RelayFixture::start();
    for name in ["gamma", "alpha", "beta"] {
        fixture.group(json!({"name": name, "items": []}));
    }
    fixture
}

fn get(fixture: &RelayFixture, path: &str, headers: &[(&str, &str)]) -> TestResponse {
    request(fixture.gateway.address, "GET", path, headers, b"")
}

fn ids(list: &Value, field: &str) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|model| model[field].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn openai_clients_get_the_openai_list() {
    let fixture = fixture_with_three_groups();
    let bearer = format!("Bearer {}", fixture.client_key);
    let response = get(&fixture, "/v1/models", &[("authorization", &bearer)]);
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["object"], "list");
    assert_eq!(ids(&body["data"], "id"), ["alpha", "beta", "gamma"]);
    for model in body["data"].as_array().unwrap() {
        assert_eq!(model["object"], "model");
        assert_eq!(model["owned_by"], "octopus");
        assert!(
            model["created"]
                .as_i64()
                .is_some_and(|created| created > 1_600_000_000),
            "{model}"
        );
    }
}

#[test]
fn anthropic_clients_get_the_anthropic_list() {
    let fixture = fixture_with_three_groups();
    let bearer = format!("Bearer {}", fixture.client_key);
    let by_api_key = get(
        &fixture,
        "/v1/models",
        &[("x-api-key", &fixture.client_key)],
    );
    let by_version = get(
        &fixture,
        "/v1/models",
        &[
            ("authorization", &bearer),
            ("anthropic-version", "2023-06-01"),
        ],
    );
    for response in [by_api_key, by_version] {
        assert_eq!(response.status, 200, "{}", response.text());
        let body = response.json();
        assert_eq!(ids(&body["data"], "id"), ["alpha", "beta", "gamma"]);
        assert_eq!(body["has_more"], false);
        assert_eq!(body["first_id"], "alpha");
        assert_eq!(body["last_id"], "gamma");
        for model in body["data"].as_array().unwrap() {
            assert_eq!(model["type"], "model");
            assert_eq!(model["display_name"], model["id"]);
            let created_at = model["created_at"].as_str().unwrap();
            assert!(
                created_at.len() == 20
                    && created_at.ends_with('Z')
                    && created_at.as_bytes()[10] == b'T',
                "RFC 3339: {created_at}"
            );
        }
        assert!(body.get("object").is_none());
    }
}

#[test]
fn gemini_clients_get_the_gemini_list_in_pages() {
    let fixture = fixture_with_three_groups();
    let response = get(
        &fixture,
        &format!("/v1beta/models?key={}", fixture.client_key),
        &[],
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(
        ids(&body["models"], "name"),
        ["models/alpha", "models/beta", "models/gamma"]
    );
    assert!(
        body.get("nextPageToken").is_none(),
        "one page holds everything: {body}"
    );
    let alpha = &body["models"][0];
    assert_eq!(alpha["baseModelId"], "alpha");
    assert_eq!(alpha["displayName"], "alpha");
    assert_eq!(
        alpha["supportedGenerationMethods"],
        json!(["generateContent", "streamGenerateContent"])
    );

    let header = [("x-goog-api-key", fixture.client_key.as_str())];
    let first_page = get(&fixture, "/v1beta/models?pageSize=2", &header).json();
    assert_eq!(
        ids(&first_page["models"], "name"),
        ["models/alpha", "models/beta"]
    );
    let token = first_page["nextPageToken"]
        .as_str()
        .expect("a next page token")
        .to_string();
    let second_page = get(
        &fixture,
        &format!("/v1beta/models?pageSize=2&pageToken={token}"),
        &header,
    )
    .json();
    assert_eq!(ids(&second_page["models"], "name"), ["models/gamma"]);
    assert!(second_page.get("nextPageToken").is_none(), "{second_page}");
}

#[test]
fn allowed_models_filter_every_list() {
    let fixture = fixture_with_three_groups();
    let limited =
        fixture.client_key_with(json!({"name": "limited", "allowed_models": ["beta", "gamma"]}));
    let bearer = format!("Bearer {limited}");

    let openai = get(&fixture, "/v1/models", &[("authorization", &bearer)]).json();
    assert_eq!(ids(&openai["data"], "id"), ["beta", "gamma"]);
    let anthropic = get(
        &fixture,
        "/v1/models",
        &[("x-api-key", &limited), ("anthropic-version", "2023-06-01")],
    )
    .json();
    assert_eq!(ids(&anthropic["data"], "id"), ["beta", "gamma"]);
    assert_eq!(anthropic["first_id"], "beta");
    let gemini = get(&fixture, "/v1beta/models", &[("x-goog-api-key", &limited)]).json();
    assert_eq!(
        ids(&gemini["models"], "name"),
        ["models/beta", "models/gamma"]
    );
}

#[test]
fn model_lists_refuse_a_missing_or_wrong_key_in_the_matching_shape() {
    let fixture = fixture_with_three_groups();
    let wrong = "sk-octopus-wrongwrongwrongwrongwrongwrongwrongwrongwrong";
    let wrong_bearer = format!("Bearer {wrong}");

    let openai = get(&fixture, "/v1/models", &[]);
    OPENAI_CHAT.assert_error(&openai, 401, AUTHENTICATION_ERROR);
    let openai_wrong = get(&fixture, "/v1/models", &[("authorization", &wrong_bearer)]);
    OPENAI_CHAT.assert_error(&openai_wrong, 401, AUTHENTICATION_ERROR);

    let anthropic = get(
        &fixture,
        "/v1/models",
        &[("anthropic-version", "2023-06-01")],
    );
    ANTHROPIC.assert_error(&anthropic, 401, AUTHENTICATION_ERROR);
    let anthropic_wrong = get(&fixture, "/v1/models", &[("x-api-key", wrong)]);
    ANTHROPIC.assert_error(&anthropic_wrong, 401, AUTHENTICATION_ERROR);

    let gemini = get(&fixture, "/v1beta/models", &[]);
    GEMINI.assert_error(&gemini, 401, AUTHENTICATION_ERROR);
    let gemini_wrong = get(&fixture, &format!("/v1beta/models?key={wrong}"), &[]);
    GEMINI.assert_error(&gemini_wrong, 401, AUTHENTICATION_ERROR);
}
