//! The large-body phase: keep-alive clients each send a few chat requests of 150 KiB (an agent's
//! whole conversation goes with every call), all clients at once, then leave their connections
//! open and idle. It reads the gateway's peak memory against the request bytes in flight, and
//! what an idle keep-alive connection keeps after such requests.

use std::net::SocketAddr;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::http_client::{build_request, ClientConnection};
use crate::measure::{ErrorTally, IO_TIMEOUT};
use crate::proc_stats::{peak_resident_kib, reset_peak_resident, resident, Resident};

/// Clients sending at once, each on its own keep-alive connection.
pub const LARGE_BODY_CLIENTS: usize = 100;
/// The size of each request body.
pub const LARGE_BODY_BYTES: usize = 150 * 1024;
/// Requests per client; the clients start each round together.
pub const REQUESTS_PER_CLIENT: usize = 5;
/// How long the connections stay idle before the gateway's memory is read: longer than the
/// 6 s after which the gateway's idle keep-alive connections give back their memory
/// (`RELEASE_IDLE_MEMORY_AFTER` in the gateway's `http/server.rs`).
pub const IDLE_BEFORE_READING: Duration = Duration::from_secs(7);
/// How long after the clients close before the memory is read again.
const SETTLE_AFTER_CLOSE: Duration = Duration::from_millis(500);

/// The gateway's memory around the phase, and how the requests fared.
#[derive(Default)]
pub struct LargeBodies {
    pub before: Option<Resident>,
    /// The highest VmRSS (KiB) while the requests were answered (VmHWM, reset just before).
    pub peak_kib: Option<u64>,
    /// With every client's connection open and idle for `IDLE_BEFORE_READING`.
    pub idle_connections_open: Option<Resident>,
    pub after_close: Option<Resident>,
    /// Connections that stayed open to the end (the per-connection figure divides by this).
    pub idle_connections: usize,
    pub answered: u64,
    pub errors: ErrorTally,
}

impl LargeBodies {
    /// The most request bytes the gateway held at once: every client's body.
    pub fn body_bytes_in_flight() -> u64 {
        (LARGE_BODY_CLIENTS * LARGE_BODY_BYTES) as u64
    }

    pub fn requests_sent() -> u64 {
        (LARGE_BODY_CLIENTS * REQUESTS_PER_CLIENT) as u64
    }
}

/// A chat request for `model` whose user message makes the body `LARGE_BODY_BYTES` long.
fn large_chat_body(model: &str) -> Vec<u8> {
    let skeleton = json!({"model": model, "messages": [{"role": "user", "content": ""}], "max_tokens": 32}).to_string();
    let filler = "All work and no play makes a long prompt. ".repeat(LARGE_BODY_BYTES / 42 + 1);
    let content = &filler[..LARGE_BODY_BYTES - skeleton.len()];
    let body = json!({"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 32}).to_string();
    debug_assert_eq!(body.len(), LARGE_BODY_BYTES);
    body.into_bytes()
}

/// Runs the phase against `address` (the gateway) with the client key `bearer` and the group
/// `model`; `gateway_pid` is read for memory.
pub fn run(address: SocketAddr, bearer: &str, model: &str, gateway_pid: u32) -> LargeBodies {
    let request = Arc::new(build_request("POST", address, "/v1/chat/completions", Some(bearer), Some(&large_chat_body(model))));
    let mut phase = LargeBodies { before: resident(gateway_pid), ..LargeBodies::default() };
    let peak_was_reset = reset_peak_resident(gateway_pid);
    let rounds = Arc::new(Barrier::new(LARGE_BODY_CLIENTS));
    let outcome = Arc::new(Mutex::new((0u64, ErrorTally::default())));
    let clients: Vec<_> = (0..LARGE_BODY_CLIENTS)
        .map(|_| {
            let (request, rounds, outcome) = (Arc::clone(&request), Arc::clone(&rounds), Arc::clone(&outcome));
            std::thread::spawn(move || {
                let mut connection = ClientConnection::connect(address, IO_TIMEOUT).ok();
                for _ in 0..REQUESTS_PER_CLIENT {
                    rounds.wait();
                    let result = match connection.as_mut() {
                        Some(open) => open.exchange(&request).map(|response| response.status),
                        None => Err(std::io::Error::other("could not connect")),
                    };
                    let mut outcome = outcome.lock().expect("no client panics holding the tally");
                    match result {
                        Ok(200) => outcome.0 += 1,
                        Ok(status) => outcome.1.record(format!("status {status}")),
                        Err(error) => outcome.1.record(error.to_string()),
                    }
                }
                connection
            })
        })
        .collect();
    let connections: Vec<ClientConnection> = clients.into_iter().filter_map(|client| client.join().ok().flatten()).collect();
    phase.peak_kib = if peak_was_reset { peak_resident_kib(gateway_pid) } else { None };
    phase.idle_connections = connections.len();
    std::thread::sleep(IDLE_BEFORE_READING);
    phase.idle_connections_open = resident(gateway_pid);
    drop(connections);
    std::thread::sleep(SETTLE_AFTER_CLOSE);
    phase.after_close = resident(gateway_pid);
    let (answered, errors) = std::mem::take(&mut *outcome.lock().expect("no client panics holding the tally"));
    phase.answered = answered;
    phase.errors = errors;
    phase
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_large_body_is_valid_json_of_the_stated_size() {
        let body = large_chat_body("bench");
        assert_eq!(body.len(), LARGE_BODY_BYTES);
        let parsed: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
        assert_eq!(parsed["model"], "bench");
        assert!(parsed["messages"][0]["content"].as_str().unwrap().len() > LARGE_BODY_BYTES - 200);
    }
}
