//! The secrets audit: the real binary at `trace` log level, every place a secret passes (logins,
//! the password change, channel and client-key CRUD, relay calls with each way of sending a
//! client key, a wrong key, an upstream that echoes the channel key in its error, the Amp proxy,
//! the live tail with `?token=`, `/metrics` with its token), then a search of the captured log
//! output and of every API answer for each secret used.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use support::binary::{RunningBinary, start_logged, stop_and_read_log};
use support::databases::temp_dir;
use support::http_client::{OpenResponse, TestResponse, json_request, request};
use support::mock_upstream::{MockUpstream, Reply, default_reply};

const CHANNEL_KEY: &str = "sk-upstream-CHANNELSECRET-0123456789abcdef";
const AMP_KEY: &str = "sgamp_user_AMPSECRET_0123456789";
const ANTIGRAVITY_CLIENT_SECRET: &str = "GOCSPX-ANTIGRAVITYSECRET-0123";
const WRONG_PASSWORD: &str = "wrong-PASSWORDSECRET-guess";
const NEW_PASSWORD: &str = "new-PASSWORDSECRET-0123456789";
const WRONG_CLIENT_KEY: &str = "sk-octopus-WRONGKEYSECRET0123456789";
const METRICS_TOKEN: &str = "metrics-TOKENSECRET-0123456789";

/// The mock is the provider and the Amp server. Model `leaky` answers 401 with the channel key
/// it was sent in the message, as some OpenAI-compatible providers do.
fn mock_provider() -> MockUpstream {
    MockUpstream::start(|recorded| {
        if recorded.path.starts_with("/api/") {
            return Reply::Json {
                status: 200,
                headers: Vec::new(),
                body: json!({"user": "amp-user"}).to_string(),
            };
        }
        if recorded.path.ends_with("/chat/completions") && recorded.model() == "leaky" {
            let sent_key = recorded
                .header("authorization")
                .unwrap_or_default()
                .trim_start_matches("Bearer ")
                .to_string();
            let body = json!({"error": {"message": format!("Incorrect API key provided: {sent_key}"), "type": "invalid_request_error", "code": "invalid_api_key"}});
            return Reply::Json {
                status: 401,
                headers: Vec::new(),
                body: body.to_string(),
            };
        }
        default_reply(recorded)
    })
}

fn start_binary(dir: &Path, mock: &MockUpstream) -> (RunningBinary, SocketAddr) {
    let amp_url = mock.base_url();
    start_logged(
        dir,
        &[
            ("OCTOPUS_LOG_LEVEL", "trace"),
            ("OCTOPUS_AMPCODE_ENABLED", "true"),
            ("OCTOPUS_AMPCODE_UPSTREAM_URL", &amp_url),
            ("OCTOPUS_AMPCODE_UPSTREAM_API_KEY", AMP_KEY),
            ("OCTOPUS_ANTIGRAVITY_CLIENT_SECRET", ANTIGRAVITY_CLIENT_SECRET),
        ],
    )
}

/// A relay call: label, path with query, headers, body.
type RelayCall<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, &'a str);

/// Every answer seen, with a label, so a leak names where it happened.
#[derive(Default)]
struct Answers {
    seen: Vec<(String, String)>,
}

impl Answers {
    fn keep(&mut self, label: &str, response: &TestResponse) {
        let headers: Vec<String> = response
            .headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}"))
            .collect();
        self.seen.push((
            label.to_string(),
            format!("{}\n{}", headers.join("\n"), response.text()),
        ));
    }

    /// Fails if `secret` is in any answer except those whose label is in `allowed_in`.
    fn assert_absent(&self, secret: &str, allowed_in: &[&str]) {
        for (label, text) in &self.seen {
            if !allowed_in.contains(&label.as_str()) {
                assert!(
                    !text.contains(secret),
                    "{secret} leaked in the answer to {label}: {text}"
                );
            }
        }
    }
}

#[test]
fn no_secret_reaches_a_log_line_or_an_api_answer() {
    let mock = mock_provider();
    let dir = temp_dir("secrets");
    let (mut child, address) = start_binary(&dir, &mock);
    let mut answers = Answers::default();
    let admin = |answers: &mut Answers,
                 label: &str,
                 method: &str,
                 path: &str,
                 token: Option<&str>,
                 body: Option<Value>| {
        let response = json_request(address, method, path, token, body.as_ref());
        answers.keep(label, &response);
        response
    };

    // Logins and the password change.
    let failed = admin(
        &mut answers,
        "failed login",
        "POST",
        "/api/v1/auth/login",
        None,
        Some(json!({"username": "admin", "password": WRONG_PASSWORD})),
    );
    assert_eq!(failed.status, 401);
    let login = admin(
        &mut answers,
        "login",
        "POST",
        "/api/v1/auth/login",
        None,
        Some(json!({"username": "admin", "password": "admin"})),
    );
    let first_token = login.json()["token"].as_str().unwrap().to_string();
    let changed = admin(
        &mut answers,
        "password change",
        "POST",
        "/api/v1/auth/password",
        Some(&first_token),
        Some(json!({"old_password": "admin", "new_password": NEW_PASSWORD})),
    );
    assert_eq!(changed.status, 200, "{}", changed.text());
    let session_token = changed.json()["token"].as_str().unwrap().to_string();
    let token = Some(session_token.as_str());

    // Configuration with a channel key, a client key and a metrics token.
    let channel = admin(
        &mut answers,
        "channel create",
        "POST",
        "/api/v1/channels",
        token,
        Some(
            json!({"name": "c", "type": "openai_chat", "base_urls": [mock.base_url()], "keys": [CHANNEL_KEY]}),
        ),
    );
    assert_eq!(channel.status, 201, "{}", channel.text());
    let channel_id = channel.json()["id"].as_i64().unwrap();
    for (name, model) in [("g", "m"), ("leaky", "leaky")] {
        let group = admin(
            &mut answers,
            "group create",
            "POST",
            "/api/v1/groups",
            token,
            Some(json!({"name": name, "items": [{"channel_id": channel_id, "model": model}]})),
        );
        assert_eq!(group.status, 201, "{}", group.text());
    }
    let settings = admin(
        &mut answers,
        "settings put",
        "PUT",
        "/api/v1/settings",
        token,
        Some(json!({"log_bodies": true, "metrics_enabled": true, "metrics_token": METRICS_TOKEN})),
    );
    assert_eq!(settings.status, 200, "{}", settings.text());
    let created_key = admin(
        &mut answers,
        "client key create",
        "POST",
        "/api/v1/api-keys",
        token,
        Some(json!({"name": "k"})),
    );
    let client_key = created_key.json()["key"].as_str().unwrap().to_string();
    let key_id = created_key.json()["id"].as_i64().unwrap();

    // Relay calls with every way of sending the client key, a wrong key, and a leaky upstream.
    let bearer = format!("Bearer {client_key}");
    let chat = json!({"model": "g", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let gemini = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).to_string();
    let anthropic =
        json!({"model": "g", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
    let streamed =
        json!({"model": "g", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
    let leaky =
        json!({"model": "leaky", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let calls: Vec<RelayCall> = vec![
        (
            "relay bearer",
            "/v1/chat/completions".to_string(),
            vec![("authorization", &bearer)],
            &chat,
        ),
        (
            "relay stream",
            "/v1/chat/completions".to_string(),
            vec![("authorization", &bearer)],
            &streamed,
        ),
        (
            "relay x-api-key",
            "/v1/messages".to_string(),
            vec![("x-api-key", &client_key)],
            &anthropic,
        ),
        (
            "relay x-goog-api-key",
            "/v1beta/models/g:generateContent".to_string(),
            vec![("x-goog-api-key", &client_key)],
            &gemini,
        ),
        (
            "relay query key",
            format!("/v1beta/models/g:generateContent?key={client_key}"),
            vec![],
            &gemini,
        ),
        (
            "relay wrong key",
            "/v1/chat/completions".to_string(),
            vec![(
                "authorization",
                "Bearer sk-octopus-WRONGKEYSECRET0123456789",
            )],
            &chat,
        ),
        (
            "relay wrong query key",
            format!("/v1beta/models/g:generateContent?key={WRONG_CLIENT_KEY}"),
            vec![],
            &gemini,
        ),
        (
            "relay leaky upstream",
            "/v1/chat/completions".to_string(),
            vec![("authorization", &bearer)],
            &leaky,
        ),
    ];
    let mut statuses = Vec::new();
    for (label, path, headers, body) in &calls {
        let response = request(address, "POST", path, headers, body.as_bytes());
        statuses.push((*label, response.status));
        answers.keep(label, &response);
    }
    let models = request(
        address,
        "GET",
        &format!("/v1/models?key={client_key}"),
        &[],
        b"",
    );
    answers.keep("relay models", &models);
    assert_eq!(
        statuses,
        [
            ("relay bearer", 200),
            ("relay stream", 200),
            ("relay x-api-key", 200),
            ("relay x-goog-api-key", 200),
            ("relay query key", 200),
            ("relay wrong key", 401),
            ("relay wrong query key", 401),
            ("relay leaky upstream", 401)
        ]
    );
    assert_eq!(models.status, 200);
    let leaky_sent = mock
        .requests()
        .into_iter()
        .filter(|recorded| recorded.model() == "leaky")
        .count();
    assert!(leaky_sent >= 1, "the leaky upstream was called");

    // The Amp proxy puts the Amp key on the upstream call.
    let amp = request(
        address,
        "GET",
        "/api/user",
        &[("authorization", &bearer)],
        b"",
    );
    assert_eq!(amp.status, 200, "{}", amp.text());
    answers.keep("amp management", &amp);
    let amp_call = mock
        .requests()
        .into_iter()
        .find(|recorded| recorded.path == "/api/user")
        .expect("the Amp call");
    assert_eq!(
        amp_call.header("authorization"),
        Some(format!("Bearer {AMP_KEY}").as_str()),
        "the Amp key is really used"
    );

    // The live tail takes the session token in the query.
    let tail = OpenResponse::start(
        address,
        "GET",
        &format!("/api/v1/logs/tail?token={}", session_token.as_str()),
        &[],
        b"",
    );
    assert_eq!(tail.status, 200);
    tail.close();
    let metrics = request(
        address,
        "GET",
        "/metrics",
        &[("authorization", &format!("Bearer {METRICS_TOKEN}"))],
        b"",
    );
    assert_eq!(metrics.status, 200);
    answers.keep("metrics", &metrics);

    // Every read the admin API offers (except /export, which carries channel keys by design).
    let started = Instant::now();
    let logs = loop {
        let logs = admin(
            &mut answers,
            "logs",
            "GET",
            "/api/v1/logs?page_size=100",
            token,
            None,
        );
        if logs.json()["total"].as_u64().unwrap_or(0) >= 8
            || started.elapsed() > Duration::from_secs(10)
        {
            break logs.json();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        logs["total"].as_u64().unwrap() >= 8,
        "the relay calls were logged: {logs}"
    );
    for item in logs["items"].as_array().unwrap() {
        let id = item["id"].as_i64().unwrap();
        admin(
            &mut answers,
            "log detail",
            "GET",
            &format!("/api/v1/logs/{id}"),
            token,
            None,
        );
    }
    for path in [
        "/api/v1/auth/me".to_string(),
        "/api/v1/channels".to_string(),
        format!("/api/v1/channels/{channel_id}"),
        "/api/v1/groups".to_string(),
        "/api/v1/api-keys".to_string(),
        format!("/api/v1/api-keys/{key_id}"),
        "/api/v1/stats/summary".to_string(),
        "/api/v1/stats/daily".to_string(),
        "/api/v1/stats/hourly".to_string(),
        "/api/v1/stats/channels".to_string(),
        "/api/v1/stats/api-keys".to_string(),
        "/api/v1/stats/groups".to_string(),
        "/api/v1/stats/models".to_string(),
        "/api/v1/jobs".to_string(),
        "/api/v1/settings".to_string(),
        "/api/v1/version".to_string(),
        "/api/v1/prices/sync".to_string(),
    ] {
        let response = admin(&mut answers, &path, "GET", &path, token, None);
        assert_eq!(response.status, 200, "{path}: {}", response.text());
    }
    let channel_read = json_request(
        address,
        "GET",
        &format!("/api/v1/channels/{channel_id}"),
        token,
        None,
    )
    .json();
    assert_ne!(
        channel_read["keys"][0], CHANNEL_KEY,
        "channel keys are masked when read back"
    );

    // Stop the gateway so every log line is written, then read them all.
    let log = stop_and_read_log(&mut child, &dir);
    assert!(
        log.contains("octopus listening on"),
        "the log was captured: {log}"
    );
    assert!(
        log.contains("[TRACE]") || log.contains("[DEBUG]"),
        "the log ran at trace level: {log}"
    );

    // A wire dump (ureq-proto at trace level) splits secrets over lines of 16 bytes; none may
    // be logged, and the ASCII columns of any such lines are searched joined up as well.
    assert!(
        !log.contains("ureq-proto") && !log.contains("ureq_proto"),
        "raw wire bytes were logged:\n{}",
        lines_containing(&log, "ureq")
    );
    let log = format!("{log}\n{}", joined_wire_dump_columns(&log));
    let session_tokens = [first_token.as_str(), session_token.as_str()];
    let secrets = [
        CHANNEL_KEY,
        AMP_KEY,
        ANTIGRAVITY_CLIENT_SECRET,
        WRONG_PASSWORD,
        NEW_PASSWORD,
        WRONG_CLIENT_KEY,
        METRICS_TOKEN,
        client_key.as_str(),
    ];
    for secret in secrets.iter().chain(session_tokens.iter()) {
        assert!(
            !log.contains(secret),
            "{secret} leaked into the log:\n{}",
            lines_containing(&log, secret)
        );
    }

    answers.assert_absent(CHANNEL_KEY, &[]);
    answers.assert_absent(AMP_KEY, &[]);
    answers.assert_absent(ANTIGRAVITY_CLIENT_SECRET, &[]);
    answers.assert_absent(WRONG_PASSWORD, &[]);
    answers.assert_absent(NEW_PASSWORD, &[]);
    answers.assert_absent(WRONG_CLIENT_KEY, &[]);
    answers.assert_absent(&client_key, &["client key create"]);
    answers.assert_absent(&first_token, &["login"]);
    answers.assert_absent(session_token.as_str(), &["password change"]);
    // The admin chose the metrics token and reads it back in the settings; nowhere else.
    answers.assert_absent(METRICS_TOKEN, &["settings put", "/api/v1/settings"]);
}

/// The text columns of hex-dump lines (`... 4745 5420 2f61  GET./a`) joined without breaks.
fn joined_wire_dump_columns(log: &str) -> String {
    log.lines()
        .filter(|line| line.contains("util.rs"))
        .filter_map(|line| line.rsplit_once("  ").map(|(_, column)| column.to_string()))
        .collect()
}

fn lines_containing(text: &str, needle: &str) -> String {
    text.lines()
        .filter(|line| line.contains(needle))
        .collect::<Vec<_>>()
        .join("\n")
}
