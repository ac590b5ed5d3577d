//! A gateway ready for relay tests: admin token and one client key, plus short helpers to
//! create channels and groups and to call the relay as a client of a given lane.

#![allow(dead_code)]

use std::net::TcpListener;

use serde_json::{Value, json};

use octopus::config::Config;
use octopus::relay::key_pool::KeyCooldown;
use octopus::relay::record::RequestRecord;

use crate::support::databases;
use crate::support::gateway::TestGateway;
use crate::support::http_client::{OpenResponse, TestResponse, request};
use crate::support::lanes::Lane;
use crate::support::mock_upstream::MockUpstream;

/// The headers of a JSON call: its content type, the auth headers, then `extra_headers`.
fn json_headers<'a>(auth_headers: &'a [(&'static str, String)], extra_headers: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    headers.extend(auth_headers.iter().map(|(name, value)| (*name, value.as_str())));
    headers.extend_from_slice(extra_headers);
    headers
}

/// The group name used by single-group tests.
pub const GROUP: &str = "team-model";
/// The upstream model name single-group tests map the group to.
pub const UPSTREAM_MODEL: &str = "provider-model-1";

pub struct RelayFixture {
    pub gateway: TestGateway,
    pub admin_token: String,
    /// A client key allowed to call every group.
    pub client_key: String,
}

impl RelayFixture {
    pub fn start() -> RelayFixture {
        RelayFixture::start_with(|_| {})
    }

    /// Starts a gateway on a fresh SQLite database, with `tweak` applied to its config.
    pub fn start_with(tweak: impl FnOnce(&mut Config)) -> RelayFixture {
        let gateway = TestGateway::start_with(databases::sqlite(), tweak);
        let admin_token = gateway.login_token();
        let client_key = gateway.create_client_key(&admin_token, json!({"name": "client"}));
        RelayFixture {
            gateway,
            admin_token,
            client_key,
        }
    }

    /// Creates a channel of the lane's type with these base URLs and keys; returns its id.
    pub fn channel(&self, lane: &Lane, name: &str, base_urls: &[String], keys: &[&str]) -> i64 {
        self.channel_with(
            json!({"name": name, "type": lane.channel_type, "base_urls": base_urls, "keys": keys}),
        )
    }

    /// Creates a channel from a full admin API body; returns its id.
    pub fn channel_with(&self, body: Value) -> i64 {
        self.gateway.create_channel(&self.admin_token, body)
    }

    /// Creates a group from a full admin API body; returns its id.
    pub fn group(&self, body: Value) -> i64 {
        self.gateway.create_group(&self.admin_token, body)
    }

    /// Creates another client key from an admin API body; returns the secret.
    pub fn client_key_with(&self, body: Value) -> String {
        self.gateway.create_client_key(&self.admin_token, body)
    }

    /// The usual single-item setup: a channel on `mock` with one key and the group `GROUP`
    /// mapped to `UPSTREAM_MODEL`. Returns the channel id.
    pub fn single_channel(&self, lane: &Lane, mock: &MockUpstream, channel_key: &str) -> i64 {
        let channel = self.channel(
            lane,
            "main",
            &[lane.base_url(&mock.base_url())],
            &[channel_key],
        );
        self.group(
            json!({"name": GROUP, "items": [{"channel_id": channel, "model": UPSTREAM_MODEL}]}),
        );
        channel
    }

    /// A failover group over one channel with one item per upstream model, tried in the given
    /// order; `extra` adds group fields (`max_attempts`, timeouts, ...). Returns the group id.
    pub fn failover_group(&self, name: &str, channel: i64, models: &[&str], extra: Value) -> i64 {
        let items: Vec<Value> = models
            .iter()
            .enumerate()
            .map(|(index, model)| json!({"channel_id": channel, "model": model, "priority": index}))
            .collect();
        let mut body = json!({"name": name, "mode": "failover", "items": items});
        for (field, value) in extra.as_object().expect("extra group fields are an object") {
            body[field] = value.clone();
        }
        self.group(body)
    }

    /// Calls the relay as a client of `lane` for `group`, with the fixture's client key.
    pub fn call(&self, lane: &Lane, group: &str, stream: bool) -> TestResponse {
        self.call_as(lane, group, stream, &self.client_key, &[])
    }

    /// Calls the relay as a client of `lane` with `client_key` and extra headers.
    pub fn call_as(
        &self,
        lane: &Lane,
        group: &str,
        stream: bool,
        client_key: &str,
        extra_headers: &[(&str, &str)],
    ) -> TestResponse {
        let body = lane.body(group, stream).to_string();
        self.call_raw(
            &lane.path(group, stream),
            &lane.auth_headers(client_key),
            extra_headers,
            body.as_bytes(),
        )
    }

    /// Sends `body` to `path` with the given auth and extra headers, as JSON.
    pub fn call_raw(
        &self,
        path: &str,
        auth_headers: &[(&'static str, String)],
        extra_headers: &[(&str, &str)],
        body: &[u8],
    ) -> TestResponse {
        let headers = json_headers(auth_headers, extra_headers);
        request(self.gateway.address, "POST", path, &headers, body)
    }

    /// Starts a streamed call of the relay as a client of `lane` for `group`, with the fixture's
    /// client key, and returns once the response head is read; the events are read one chunk at
    /// a time.
    pub fn open_stream(&self, lane: &Lane, group: &str) -> OpenResponse {
        let body = lane.body(group, true).to_string();
        let auth_headers = lane.auth_headers(&self.client_key);
        let headers = json_headers(&auth_headers, &[]);
        OpenResponse::start(self.gateway.address, "POST", &lane.path(group, true), &headers, body.as_bytes())
    }

    /// The channel keys cooling down right now (after a 429, 401/403 or exhausted quota).
    pub fn key_cooldowns(&self) -> Vec<KeyCooldown> {
        let relay = &self
            .gateway
            .gateway
            .as_ref()
            .expect("the gateway is running")
            .relay;
        let now_ms = relay.health.now_ms();
        relay.health.lock().keys.cooling_keys(now_ms)
    }

    /// The finished-request records, once at least `count` exist.
    pub fn records(&self, count: usize) -> Vec<RequestRecord> {
        self.gateway.wait_for_records(count)
    }
}

/// A base URL on 127.0.0.1 where nothing listens: connecting to it is refused at once.
pub fn dead_base_url(lane: &Lane) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a port to free it");
    let address = listener.local_addr().unwrap();
    drop(listener);
    lane.base_url(&format!("http://{address}"))
}
