//! Integration tests of `AntigravityAuth` against a mock OAuth token endpoint and a mock
//! loadCodeAssist server on 127.0.0.1, with callers running as may coroutines.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use octopus::config::AntigravityConfig;
use octopus::upstream::client::{ClientOptions, UpstreamClient};
use octopus::upstream::google_oauth::{AntigravityAuth, AuthError};
use octopus::util::percent_decode;

/// The longest any test waits for its coroutines before failing.
const TEST_DEADLINE: Duration = Duration::from_secs(20);
/// A mock server stops accepting after this long, whatever the test does.
const MOCK_LIFETIME: Duration = Duration::from_secs(60);
const MOCK_IO_TIMEOUT: Duration = Duration::from_secs(5);

const CLIENT_ID: &str = "client-id.apps.example";
const CLIENT_SECRET: &str = "GOCSPX-super secret&value";

// ----- runtime helpers -----

fn init_runtime() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        may::config().set_stack_size(0x8000);
    });
}

/// Runs `body` in a may coroutine and returns its result, failing the test after TEST_DEADLINE.
fn in_coroutine<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    init_runtime();
    let (sender, receiver) = mpsc::channel();
    may::go!(move || {
        let _ = sender.send(body());
    });
    receiver
        .recv_timeout(TEST_DEADLINE)
        .expect("the coroutine did not finish in time")
}

fn auth_with(config: AntigravityConfig) -> Arc<AntigravityAuth> {
    let client = UpstreamClient::new(ClientOptions {
        connect_timeout: Duration::from_secs(3),
        ..ClientOptions::default()
    })
    .expect("client options are valid");
    Arc::new(AntigravityAuth::new(client, config))
}

fn config(token_url: &str) -> AntigravityConfig {
    AntigravityConfig {
        token_url: token_url.to_string(),
        client_id: CLIENT_ID.to_string(),
        client_secret: CLIENT_SECRET.to_string(),
        project: String::new(),
    }
}

// ----- mock server -----

#[derive(Clone, Debug)]
struct RecordedRequest {
    method: String,
    path: String,
    /// Names in lower case.
    headers: HashMap<String, String>,
    body: String,
}

struct MockReply {
    status: u16,
    body: String,
    delay: Duration,
}

fn reply(status: u16, body: &str) -> MockReply {
    MockReply {
        status,
        body: body.to_string(),
        delay: Duration::ZERO,
    }
}

type Handler = dyn Fn(&RecordedRequest, usize) -> MockReply + Send + Sync;

/// A one-request-per-connection HTTP server on a std thread that records every request and
/// answers with `handler(request, index of the request)`.
struct MockServer {
    url: String,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    stop: Arc<AtomicBool>,
}

impl MockServer {
    fn start(
        handler: impl Fn(&RecordedRequest, usize) -> MockReply + Send + Sync + 'static,
    ) -> MockServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (thread_requests, thread_stop) = (requests.clone(), stop.clone());
        thread::spawn(move || {
            let started = Instant::now();
            while !thread_stop.load(Ordering::Relaxed) && started.elapsed() < MOCK_LIFETIME {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (requests, handler) = (thread_requests.clone(), handler.clone());
                        thread::spawn(move || serve(stream, &requests, &*handler));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        MockServer {
            url,
            requests,
            stop,
        }
    }

    fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(stream: TcpStream, requests: &Mutex<Vec<RecordedRequest>>, handler: &Handler) {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(MOCK_IO_TIMEOUT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = HashMap::new();
    for _ in 0..100 {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_lowercase(), value.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let request = RecordedRequest {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let index = {
        let mut requests = requests.lock().unwrap();
        requests.push(request.clone());
        requests.len() - 1
    };
    let answer = handler(&request, index);
    thread::sleep(answer.delay);
    let response = format!(
        "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        answer.status,
        answer.body.len(),
        answer.body
    );
    let mut stream = stream;
    let _ = stream.write_all(response.as_bytes());
}

/// A token endpoint that hands out `access-<n>` with the given lifetime.
fn token_endpoint(expires_in: u64) -> MockServer {
    MockServer::start(move |_, index| {
        reply(
            200,
            &format!(
                r#"{{"access_token":"ya29.access-{index}","expires_in":{expires_in},"token_type":"Bearer"}}"#
            ),
        )
    })
}

fn form_fields(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| (percent_decode(name), percent_decode(value)))
        .collect()
}

// ----- access tokens -----

#[test]
fn access_tokens_pass_through_without_a_call() {
    let server = token_endpoint(3599);
    let auth = auth_with(config(&format!("{}/token", server.url)));
    let token = in_coroutine(move || auth.access_token("  ya29.already-an-access-token\n", false));
    assert_eq!(token.unwrap(), "ya29.already-an-access-token");
    assert!(server.requests().is_empty());
}

#[test]
fn refresh_token_is_exchanged_once_and_cached() {
    let server = token_endpoint(3599);
    let auth = auth_with(config(&format!("{}/token", server.url)));
    let (first, second) = in_coroutine(move || {
        (
            auth.access_token("1//refresh-a", false),
            auth.access_token("1//refresh-a", false),
        )
    });
    assert_eq!(first.unwrap(), "ya29.access-0");
    assert_eq!(second.unwrap(), "ya29.access-0");
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, "/token");
    assert_eq!(
        requests[0].headers["content-type"],
        "application/x-www-form-urlencoded"
    );
}

#[test]
fn form_body_is_percent_encoded() {
    let server = token_endpoint(3599);
    let auth = auth_with(config(&format!("{}/token", server.url)));
    let refresh_token = "1//0g+abc/def=&x y";
    in_coroutine(move || auth.access_token(refresh_token, false)).unwrap();

    let body = server.requests()[0].body.clone();
    // Every reserved character is escaped, so the four fields split cleanly on `&`.
    assert_eq!(body.matches('&').count(), 3, "{body}");
    assert!(
        body.contains("refresh_token=1%2F%2F0g%2Babc%2Fdef%3D%26x%20y"),
        "{body}"
    );
    let fields = form_fields(&body);
    assert_eq!(fields["grant_type"], "refresh_token");
    assert_eq!(fields["client_id"], CLIENT_ID);
    assert_eq!(fields["client_secret"], CLIENT_SECRET);
    assert_eq!(fields["refresh_token"], refresh_token);
}

#[test]
fn token_inside_the_refresh_margin_is_refreshed() {
    let server = token_endpoint(200);
    let auth = auth_with(config(&format!("{}/token", server.url)));
    let (first, second) = in_coroutine(move || {
        (
            auth.access_token("1//short-lived", false),
            auth.access_token("1//short-lived", false),
        )
    });
    assert_eq!(first.unwrap(), "ya29.access-0");
    assert_eq!(second.unwrap(), "ya29.access-1");
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn force_refresh_makes_a_new_exchange() {
    let server = token_endpoint(3599);
    let auth = auth_with(config(&format!("{}/token", server.url)));
    let tokens = in_coroutine(move || {
        [
            auth.access_token("1//forced", false),
            auth.access_token("1//forced", true),
            auth.access_token("1//forced", false),
        ]
    });
    let tokens: Vec<String> = tokens.into_iter().map(Result::unwrap).collect();
    assert_eq!(tokens, ["ya29.access-0", "ya29.access-1", "ya29.access-1"]);
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn tokens_are_cached_per_refresh_token() {
    let server = token_endpoint(3599);
    let auth = auth_with(config(&format!("{}/token", server.url)));
    let tokens = in_coroutine(move || {
        [
            auth.access_token("1//first", false),
            auth.access_token("1//second", false),
            auth.access_token("1//first", false),
        ]
    });
    let tokens: Vec<String> = tokens.into_iter().map(Result::unwrap).collect();
    assert_eq!(tokens, ["ya29.access-0", "ya29.access-1", "ya29.access-0"]);
}

/// Starts `count` coroutines that call `access_token` at once and collects their results.
fn concurrent_callers(
    auth: &Arc<AntigravityAuth>,
    key: &'static str,
    force_refresh: bool,
    count: usize,
) -> Vec<Result<String, AuthError>> {
    init_runtime();
    let (sender, receiver) = mpsc::channel();
    for _ in 0..count {
        let (auth, sender) = (auth.clone(), sender.clone());
        may::go!(move || {
            let _ = sender.send(auth.access_token(key, force_refresh));
        });
    }
    (0..count)
        .map(|_| {
            receiver
                .recv_timeout(TEST_DEADLINE)
                .expect("a caller did not finish in time")
        })
        .collect()
}

#[test]
fn concurrent_callers_share_one_exchange() {
    let server = MockServer::start(|_, index| MockReply {
        delay: Duration::from_millis(300),
        ..reply(
            200,
            &format!(r#"{{"access_token":"ya29.shared-{index}","expires_in":3599}}"#),
        )
    });
    let auth = auth_with(config(&format!("{}/token", server.url)));
    let results = concurrent_callers(&auth, "1//crowded", false, 20);
    for result in results {
        assert_eq!(result.unwrap(), "ya29.shared-0");
    }
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn concurrent_forced_refreshes_share_one_exchange() {
    let server = MockServer::start(|_, index| MockReply {
        delay: Duration::from_millis(300),
        ..reply(
            200,
            &format!(r#"{{"access_token":"ya29.forced-{index}","expires_in":3599}}"#),
        )
    });
    let auth = auth_with(config(&format!("{}/token", server.url)));
    let caller = auth.clone();
    in_coroutine(move || caller.access_token("1//after-401", false)).unwrap();

    // Twenty requests saw a 401 with the first token at once: one new exchange serves them all.
    let results = concurrent_callers(&auth, "1//after-401", true, 20);
    for result in results {
        assert_eq!(result.unwrap(), "ya29.forced-1");
    }
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn concurrent_callers_share_one_failure() {
    let server = MockServer::start(|_, _| MockReply {
        delay: Duration::from_millis(300),
        ..reply(
            400,
            r#"{"error":"invalid_grant","error_description":"Bad Request"}"#,
        )
    });
    let auth = auth_with(config(&format!("{}/token", server.url)));
    let results = concurrent_callers(&auth, "1//revoked", false, 20);
    for result in results {
        assert!(
            matches!(result, Err(AuthError::Refused { status: 400, .. })),
            "{result:?}"
        );
    }
    assert_eq!(server.requests().len(), 1);

    // A later call tries again rather than repeating an old failure forever.
    let caller = auth.clone();
    let later = in_coroutine(move || caller.access_token("1//revoked", false));
    assert!(matches!(later, Err(AuthError::Refused { status: 400, .. })));
    assert_eq!(server.requests().len(), 2);
}

// ----- errors -----

#[test]
fn invalid_grant_is_refused_without_secrets() {
    let refresh_token = "1//revoked-refresh-token";
    // A hostile or buggy endpoint that echoes the credentials in its description.
    let server = MockServer::start(move |request, _| {
        let fields = form_fields(&request.body);
        reply(
            400,
            &serde_json::json!({
                "error": "invalid_grant",
                "error_description": format!(
                    "Token {} for client {} is bad",
                    fields["refresh_token"], fields["client_secret"]
                ),
            })
            .to_string(),
        )
    });
    let auth = auth_with(config(&format!("{}/token", server.url)));
    let error = in_coroutine(move || auth.access_token(refresh_token, false)).unwrap_err();

    let AuthError::Refused { status, message } = &error else {
        panic!("expected Refused, got {error:?}");
    };
    assert_eq!(*status, 400);
    assert!(message.starts_with("invalid_grant: "), "{message}");
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains(refresh_token), "{shown}");
    assert!(!shown.contains(CLIENT_SECRET), "{shown}");
}

#[test]
fn missing_client_credentials_are_not_configured() {
    let server = token_endpoint(3599);
    let mut without_secret = config(&format!("{}/token", server.url));
    without_secret.client_secret = String::new();
    let mut without_both = without_secret.clone();
    without_both.client_id = "  ".to_string();

    let (missing_secret, missing_both, access_token) = in_coroutine(move || {
        (
            auth_with(without_secret).access_token("1//needs-config", false),
            auth_with(without_both.clone()).access_token("1//needs-config", false),
            auth_with(without_both).access_token("ya29.usable-anyway", false),
        )
    });
    let Err(AuthError::NotConfigured(message)) = missing_secret else {
        panic!("expected NotConfigured, got {missing_secret:?}");
    };
    assert!(message.contains("antigravity.client_secret"), "{message}");
    assert!(!message.contains("antigravity.client_id"), "{message}");
    let Err(AuthError::NotConfigured(message)) = missing_both else {
        panic!("expected NotConfigured, got {missing_both:?}");
    };
    assert!(message.contains("antigravity.client_id and antigravity.client_secret"));
    assert!(!message.contains("1//needs-config"));
    assert_eq!(access_token.unwrap(), "ya29.usable-anyway");
    assert!(server.requests().is_empty());
}

#[test]
fn unreachable_token_endpoint_is_a_transport_error() {
    // Bind and drop a listener so the port is very likely closed.
    let closed_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let auth = auth_with(config(&format!("http://127.0.0.1:{closed_port}/token")));
    let result = in_coroutine(move || auth.access_token("1//unreachable", false));
    assert!(matches!(result, Err(AuthError::Transport(_))), "{result:?}");
}

#[test]
fn answer_without_access_token_is_malformed() {
    let server = MockServer::start(|_, _| reply(200, r#"{"token_type":"Bearer"}"#));
    let auth = auth_with(config(&format!("{}/token", server.url)));
    let result = in_coroutine(move || auth.access_token("1//odd-endpoint", false));
    assert!(matches!(result, Err(AuthError::Malformed(_))), "{result:?}");
}

// ----- project discovery -----

fn load_code_assist_server(answer: &'static str) -> MockServer {
    MockServer::start(move |_, _| reply(200, answer))
}

#[test]
fn project_is_discovered_from_a_string_and_cached() {
    let server = load_code_assist_server(
        r#"{"cloudaicompanionProject":"plain-project-123","currentTier":{"id":"free-tier"}}"#,
    );
    let auth = auth_with(config("http://127.0.0.1:9/token"));
    let base_url = format!("{}/", server.url);
    let (first, second) = in_coroutine(move || {
        (
            auth.project_id("1//project-key", &base_url, "ya29.bearer-for-project"),
            auth.project_id("1//project-key", &base_url, "ya29.bearer-for-project"),
        )
    });
    assert_eq!(first.unwrap(), "plain-project-123");
    assert_eq!(second.unwrap(), "plain-project-123");

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/v1internal:loadCodeAssist");
    assert_eq!(
        request.headers["authorization"],
        "Bearer ya29.bearer-for-project"
    );
    assert!(request.headers["user-agent"].starts_with("antigravity/"));
    assert!(!request.headers.contains_key("x-goog-api-key"));
    let body: serde_json::Value = serde_json::from_str(&request.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"metadata": {
            "ideType": "IDE_UNSPECIFIED",
            "platform": "PLATFORM_UNSPECIFIED",
            "pluginType": "GEMINI"
        }})
    );
}

#[test]
fn project_is_discovered_from_an_id_object() {
    let server = load_code_assist_server(
        r#"{"cloudaicompanionProject":{"id":"object-project-456","name":"projects/x"}}"#,
    );
    let auth = auth_with(config("http://127.0.0.1:9/token"));
    let base_url = server.url.clone();
    let project = in_coroutine(move || auth.project_id("1//other-key", &base_url, "ya29.x"));
    assert_eq!(project.unwrap(), "object-project-456");
}

#[test]
fn missing_project_asks_for_config() {
    let server = load_code_assist_server(r#"{"allowedTiers":[{"id":"free-tier"}]}"#);
    let auth = auth_with(config("http://127.0.0.1:9/token"));
    let base_url = server.url.clone();
    let project = in_coroutine(move || auth.project_id("1//new-account", &base_url, "ya29.x"));
    let Err(AuthError::NotConfigured(message)) = project else {
        panic!("expected NotConfigured, got {project:?}");
    };
    assert!(message.contains("antigravity.project"), "{message}");
}

#[test]
fn refused_discovery_keeps_the_status_and_hides_the_bearer() {
    let server = MockServer::start(|request, _| {
        reply(
            401,
            &serde_json::json!({"error": {
                "code": 401,
                "message": format!("bad credentials {}", request.headers["authorization"]),
                "status": "UNAUTHENTICATED"
            }})
            .to_string(),
        )
    });
    let auth = auth_with(config("http://127.0.0.1:9/token"));
    let base_url = server.url.clone();
    let project =
        in_coroutine(move || auth.project_id("1//expired", &base_url, "ya29.secret-bearer"));
    let Err(AuthError::Refused { status, message }) = project else {
        panic!("expected Refused, got {project:?}");
    };
    assert_eq!(status, 401);
    assert!(message.starts_with("bad credentials"), "{message}");
    assert!(!message.contains("ya29.secret-bearer"), "{message}");
}

#[test]
fn configured_project_short_circuits_discovery() {
    let server = load_code_assist_server(r#"{"cloudaicompanionProject":"discovered"}"#);
    let mut with_project = config("http://127.0.0.1:9/token");
    with_project.project = "configured-project".to_string();
    let auth = auth_with(with_project);
    let base_url = server.url.clone();
    let project = in_coroutine(move || auth.project_id("1//any", &base_url, "ya29.x"));
    assert_eq!(project.unwrap(), "configured-project");
    assert!(server.requests().is_empty());
}
