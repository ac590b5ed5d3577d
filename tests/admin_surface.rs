//! What the gateway shows browsers and attackers of the admin side: security headers, CORS
//! (default deny, an allow-list for the relay only), login throttling per username, session
//! expiry, and `server.admin_listen` putting the admin API and panel on a port of their own.

mod support;

use serde_json::json;

use support::databases;
use support::gateway::TestGateway;
use support::http_client::{json_request, request};
use support::mock_upstream::MockUpstream;

#[test]
fn the_panel_and_the_admin_api_carry_security_headers() {
    let gateway = TestGateway::start(databases::sqlite());
    let page = request(gateway.address, "GET", "/", &[], b"");
    assert_eq!(page.status, 200);
    let policy = page
        .header("content-security-policy")
        .expect("the panel has a CSP");
    assert!(
        policy.contains("default-src 'none'") && policy.contains("script-src 'self';"),
        "{policy}"
    );
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    assert!(
        !policy.contains("unsafe-inline") && !policy.contains("unsafe-eval"),
        "{policy}"
    );
    assert!(
        !page.text().contains("<script>"),
        "the CSP allows no inline script, so the page has none"
    );
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    let module = request(gateway.address, "GET", "/app/main.js", &[], b"");
    assert_eq!(module.status, 200);
    assert_eq!(module.header("x-content-type-options"), Some("nosniff"));

    for (path, token) in [
        ("/api/v1/openapi.json", None),
        ("/api/v1/channels", Some("not-a-token")),
        ("/healthz", None),
    ] {
        let response = json_request(gateway.address, "GET", path, token, None);
        assert_eq!(
            response.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(response.header("x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(
            response.header("content-security-policy"),
            Some("default-src 'none'; frame-ancestors 'none'"),
            "{path}"
        );
        assert_eq!(response.header("cache-control"), Some("no-store"), "{path}");
    }
}

#[test]
fn cross_origin_calls_are_refused_by_default_and_the_admin_api_is_never_opened() {
    let gateway = TestGateway::start(databases::sqlite());
    let token = gateway.admin_token();
    let preflight = |path: &str, origin: &str| {
        request(
            gateway.address,
            "OPTIONS",
            path,
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization, content-type, x-stainless-os",
                ),
            ],
            b"",
        )
    };
    let denied = preflight("/v1/chat/completions", "https://chat.example.com");
    assert_eq!(denied.status, 403, "{}", denied.text());
    assert_eq!(denied.header("access-control-allow-origin"), None);
    assert!(
        denied.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cors_allowed_origins"),
        "{}",
        denied.text()
    );
    let anthropic_denied = preflight("/v1/messages", "https://chat.example.com");
    assert_eq!(
        anthropic_denied.json()["type"],
        "error",
        "the relay answers in the client protocol's shape"
    );

    let changed = json_request(
        gateway.address,
        "PUT",
        "/api/v1/settings",
        Some(&token),
        Some(&json!({"cors_allowed_origins": "https://chat.example.com/, http://localhost:3000"})),
    );
    assert_eq!(changed.status, 200, "{}", changed.text());
    assert_eq!(
        changed.json()["cors_allowed_origins"],
        "https://chat.example.com, http://localhost:3000"
    );
    let bad = json_request(
        gateway.address,
        "PUT",
        "/api/v1/settings",
        Some(&token),
        Some(&json!({"cors_allowed_origins": "chat.example.com"})),
    );
    assert_eq!(bad.status, 400);
    assert!(
        bad.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cors_allowed_origins")
    );

    let allowed = preflight("/v1/chat/completions", "https://chat.example.com");
    assert_eq!(allowed.status, 204, "{}", allowed.text());
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://chat.example.com")
    );
    assert_eq!(
        allowed.header("access-control-allow-headers"),
        Some("authorization, content-type, x-stainless-os")
    );
    assert!(
        allowed
            .header("access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );
    assert_eq!(
        allowed.header("access-control-allow-credentials"),
        None,
        "no cookies are ever used"
    );
    assert_eq!(
        preflight("/v1/chat/completions", "https://evil.example").status,
        403,
        "an origin not on the list"
    );

    // The admin API and the panel stay closed whatever the list says.
    for path in ["/api/v1/channels", "/api/v1/auth/login", "/"] {
        let response = preflight(path, "https://chat.example.com");
        assert_eq!(response.status, 403, "{path}");
        assert_eq!(
            response.header("access-control-allow-origin"),
            None,
            "{path}"
        );
    }
    let cross_origin_read = request(
        gateway.address,
        "GET",
        "/api/v1/channels",
        &[
            ("origin", "https://chat.example.com"),
            ("authorization", &format!("Bearer {token}")),
        ],
        b"",
    );
    assert_eq!(
        cross_origin_read.header("access-control-allow-origin"),
        None
    );

    // A relay answer (here an error: no key) can be read by an allowed page, not by others.
    let from_allowed = request(
        gateway.address,
        "GET",
        "/v1/models",
        &[("origin", "http://localhost:3000")],
        b"",
    );
    assert_eq!(from_allowed.status, 401);
    assert_eq!(
        from_allowed.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    assert_eq!(from_allowed.header("vary"), Some("origin"));
    let from_other = request(
        gateway.address,
        "GET",
        "/v1/models",
        &[("origin", "https://evil.example")],
        b"",
    );
    assert_eq!(from_other.header("access-control-allow-origin"), None);
    let without_origin = request(gateway.address, "GET", "/v1/models", &[], b"");
    assert_eq!(
        without_origin.header("access-control-allow-origin"),
        None,
        "non-browser clients get no CORS headers"
    );
}

#[test]
fn failed_logins_for_one_username_are_throttled_whatever_the_address() {
    // All test connections come from 127.0.0.1, so a per-address limit far above the
    // per-username one shows that the username is what is counted.
    let gateway = TestGateway::start_with(databases::sqlite(), |config| {
        config.auth.max_failed_logins = 100;
        config.auth.max_failed_logins_per_user = 2;
    });
    let login = |username: &str, password: &str| {
        json_request(
            gateway.address,
            "POST",
            "/api/v1/auth/login",
            None,
            Some(&json!({"username": username, "password": password})),
        )
    };
    assert_eq!(login("admin", "guess-1").status, 401);
    assert_eq!(login("admin", "guess-2").status, 401);
    let blocked = login("admin", "admin");
    assert_eq!(blocked.status, 429, "{}", blocked.text());
    let retry_after: u64 = blocked.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=900).contains(&retry_after), "{retry_after}");
    assert_eq!(
        login("somebody-else", "guess").status,
        401,
        "other usernames are not blocked"
    );
}

#[test]
fn expired_sessions_are_refused() {
    let gateway = TestGateway::start(databases::sqlite());
    let live_token = gateway.login_token();
    let mut store = octopus::store::open("sqlite", &gateway.config.database.path).unwrap();
    let admin = store.admin_by_username("admin").unwrap().unwrap();
    let now = octopus::util::unix_seconds();
    let expired_token = "e".repeat(64);
    store
        .create_session(&octopus::store::entities::AdminSession {
            token_hash: octopus::util::sha256_hex(expired_token.as_bytes()),
            user_id: admin.id,
            expires_at: now - 1,
            created_at: now - 3600,
        })
        .unwrap();
    let refused = json_request(
        gateway.address,
        "GET",
        "/api/v1/auth/me",
        Some(&expired_token),
        None,
    );
    assert_eq!(refused.status, 401, "{}", refused.text());
    assert!(
        refused.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    assert_eq!(
        json_request(
            gateway.address,
            "GET",
            "/api/v1/auth/me",
            Some(&live_token),
            None
        )
        .status,
        200
    );
}

#[test]
fn admin_listen_puts_the_admin_api_and_panel_on_their_own_port() {
    let mock = MockUpstream::start(support::mock_upstream::default_reply);
    let gateway = TestGateway::start_with(databases::sqlite(), |config| {
        config.server.admin_listen = "127.0.0.1:0".to_string()
    });
    let relay_address = gateway.address;
    let admin_address = gateway.running().admin_addr();
    assert_ne!(relay_address, admin_address);

    // On the relay's port the admin API, the panel and /metrics do not exist.
    for path in ["/api/v1/openapi.json", "/", "/app/main.js"] {
        assert_eq!(
            request(relay_address, "GET", path, &[], b"").status,
            404,
            "{path} on the relay port"
        );
    }
    let login_on_relay = json_request(
        relay_address,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(&json!({"username": "admin", "password": "admin"})),
    );
    assert_eq!(login_on_relay.status, 404);
    assert_eq!(
        request(relay_address, "GET", "/healthz", &[], b"").status,
        200,
        "load balancers check the relay port"
    );

    // On the admin port they do, and the relay does not.
    assert_eq!(request(admin_address, "GET", "/", &[], b"").status, 200);
    assert_eq!(
        request(admin_address, "GET", "/api/v1/openapi.json", &[], b"").status,
        200
    );
    let login = json_request(
        admin_address,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(&json!({"username": "admin", "password": "admin"})),
    );
    assert_eq!(login.status, 200, "{}", login.text());
    let token = login.json()["token"].as_str().unwrap().to_string();
    let created = json_request(
        admin_address,
        "POST",
        "/api/v1/channels",
        Some(&token),
        Some(
            &json!({"name": "c", "type": "openai_chat", "base_urls": [mock.base_url()], "keys": ["sk-upstream"]}),
        ),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let channel_id = created.json()["id"].as_i64().unwrap();
    let group = json_request(
        admin_address,
        "POST",
        "/api/v1/groups",
        Some(&token),
        Some(&json!({"name": "g", "items": [{"channel_id": channel_id, "model": "m"}]})),
    );
    assert_eq!(group.status, 201, "{}", group.text());
    let key = json_request(
        admin_address,
        "POST",
        "/api/v1/api-keys",
        Some(&token),
        Some(&json!({"name": "k"})),
    )
    .json()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let auth = format!("Bearer {key}");
    let body = json!({"model": "g", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let metrics_on = json_request(
        admin_address,
        "PUT",
        "/api/v1/settings",
        Some(&token),
        Some(&json!({"metrics_enabled": true})),
    );
    assert_eq!(metrics_on.status, 200, "{}", metrics_on.text());
    assert_eq!(
        request(admin_address, "GET", "/metrics", &[], b"").status,
        200,
        "/metrics follows the admin API"
    );
    assert_eq!(
        request(relay_address, "GET", "/metrics", &[], b"").status,
        404
    );
    let relayed = request(
        relay_address,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &auth)],
        body.as_bytes(),
    );
    assert_eq!(
        relayed.status,
        200,
        "the relay port relays: {}",
        relayed.text()
    );
    let on_admin_port = request(
        admin_address,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &auth)],
        body.as_bytes(),
    );
    assert_eq!(on_admin_port.status, 404, "the admin port does not relay");
}
