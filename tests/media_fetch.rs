//! Client image URLs that the gateway downloads for Antigravity (which only takes inline bytes)
//! must not reach the gateway's own network: loopback and private addresses are refused unless
//! `relay.allow_private_media_urls` is set, metadata addresses always, after DNS and on every
//! redirect. A loopback image server stands in for a public host when the setting is on.

mod support;

use serde_json::{Value, json};

use support::databases;
use support::gateway::TestGateway;
use support::http_client::{TestResponse, request};
use support::mock_upstream::{MockUpstream, Reply, default_reply};

const PNG: &[u8] = b"\x89PNG\r\n\x1a\nnot-really-pixels";

/// The mock is both the Antigravity upstream and the image server.
fn image_server() -> MockUpstream {
    MockUpstream::start(|request| match request.path.as_str() {
        "/cat.png" => Reply::Binary {
            status: 200,
            content_type: "image/png".to_string(),
            bytes: PNG.to_vec(),
        },
        "/page.html" => Reply::Binary {
            status: 200,
            content_type: "text/html".to_string(),
            bytes: b"<html></html>".to_vec(),
        },
        "/hop.png" => redirect("/cat.png"),
        "/to-metadata.png" => {
            redirect("http://169.254.169.254/latest/meta-data/iam/security-credentials/")
        }
        _ => default_reply(request),
    })
}

fn redirect(location: &str) -> Reply {
    Reply::Json {
        status: 302,
        headers: vec![("location".to_string(), location.to_string())],
        body: String::new(),
    }
}

struct Setup {
    mock: MockUpstream,
    gateway: TestGateway,
    auth: String,
}

fn setup(allow_private_media_urls: bool) -> Setup {
    let mock = image_server();
    let gateway = TestGateway::start_with(databases::sqlite(), |config| {
        config.antigravity.project = "test-project".to_string();
        config.relay.allow_private_media_urls = allow_private_media_urls;
    });
    let token = gateway.admin_token();
    let channel = gateway.create_channel(&token, json!({"name": "ag", "type": "antigravity", "base_urls": [mock.base_url()], "keys": ["ya29.access-token-for-tests"]}));
    gateway.create_group(
        &token,
        json!({"name": "ag", "items": [{"channel_id": channel, "model": "gemini-2.5-flash"}]}),
    );
    let key = gateway.create_client_key(&token, json!({"name": "k"}));
    Setup {
        mock,
        gateway,
        auth: format!("Bearer {key}"),
    }
}

impl Setup {
    fn chat_with_image(&self, image_url: &str) -> TestResponse {
        let body = json!({"model": "ag", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": image_url}},
        ]}]});
        request(
            self.gateway.address,
            "POST",
            "/v1/chat/completions",
            &[("authorization", &self.auth)],
            body.to_string().as_bytes(),
        )
    }

    fn paths_requested(&self) -> Vec<String> {
        self.mock
            .requests()
            .into_iter()
            .map(|request| request.path)
            .collect()
    }

    fn upstream_calls(&self) -> Vec<Value> {
        self.mock
            .requests()
            .into_iter()
            .filter(|request| request.path.contains("v1internal"))
            .map(|request| request.json())
            .collect()
    }
}

fn error_message(response: &TestResponse) -> String {
    response.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn loopback_image_urls_are_refused_by_default_with_a_400_in_the_client_protocol() {
    let setup = setup(false);
    let url = format!("{}/cat.png", setup.mock.base_url());
    let refused = setup.chat_with_image(&url);
    assert_eq!(refused.status, 400, "{}", refused.text());
    let message = error_message(&refused);
    assert!(
        message.contains(&url),
        "the message names the image: {message}"
    );
    assert!(
        message.contains("127.0.0.1") && message.contains("loopback"),
        "the message names the reason: {message}"
    );
    assert!(
        message.contains("relay.allow_private_media_urls"),
        "the message names the setting: {message}"
    );

    // The host name is resolved first; what it resolves to is what is judged.
    let by_name = setup.chat_with_image(&format!(
        "http://localhost:{}/cat.png",
        setup.mock.address.port()
    ));
    assert_eq!(by_name.status, 400, "{}", by_name.text());
    assert!(
        error_message(&by_name).contains("loopback"),
        "{}",
        error_message(&by_name)
    );

    // An Anthropic client gets the refusal in its own error shape.
    let anthropic_body = json!({"model": "ag", "max_tokens": 16, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": url}},
        {"type": "text", "text": "what is this?"},
    ]}]});
    let anthropic = request(
        setup.gateway.address,
        "POST",
        "/v1/messages",
        &[("x-api-key", setup.auth.trim_start_matches("Bearer "))],
        anthropic_body.to_string().as_bytes(),
    );
    assert_eq!(anthropic.status, 400, "{}", anthropic.text());
    assert_eq!(anthropic.json()["type"], "error");
    assert_eq!(anthropic.json()["error"]["type"], "invalid_request_error");
    assert!(
        error_message(&anthropic).contains("loopback"),
        "{}",
        anthropic.text()
    );

    assert!(
        setup.paths_requested().is_empty(),
        "neither the image server nor the upstream was contacted: {:?}",
        setup.paths_requested()
    );
}

#[test]
fn private_image_urls_are_downloaded_through_redirects_when_the_admin_allows_them() {
    let setup = setup(true);
    let response = setup.chat_with_image(&format!("{}/hop.png", setup.mock.base_url()));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(setup.paths_requested()[..2], ["/hop.png", "/cat.png"]);
    let calls = setup.upstream_calls();
    assert_eq!(calls.len(), 1);
    let parts = calls[0]["request"]["contents"][0]["parts"]
        .as_array()
        .unwrap()
        .clone();
    let inline = parts
        .iter()
        .find_map(|part| part.get("inlineData"))
        .expect("the image is inline");
    assert_eq!(inline["mimeType"], "image/png");
    assert_eq!(inline["data"], octopus::util::base64_encode(PNG));
}

#[test]
fn a_redirect_to_the_metadata_address_is_refused_even_when_private_addresses_are_allowed() {
    let setup = setup(true);
    let response = setup.chat_with_image(&format!("{}/to-metadata.png", setup.mock.base_url()));
    assert_eq!(response.status, 400, "{}", response.text());
    let message = error_message(&response);
    assert!(
        message.contains("169.254.169.254") && message.contains("metadata"),
        "{message}"
    );
    assert_eq!(
        setup.paths_requested(),
        ["/to-metadata.png"],
        "the upstream was not called"
    );
}

#[test]
fn answers_that_are_not_images_are_refused() {
    let setup = setup(true);
    let response = setup.chat_with_image(&format!("{}/page.html", setup.mock.base_url()));
    assert_eq!(response.status, 400, "{}", response.text());
    assert!(
        error_message(&response).contains("text/html, not an image"),
        "{}",
        response.text()
    );
    assert!(setup.upstream_calls().is_empty());
}
