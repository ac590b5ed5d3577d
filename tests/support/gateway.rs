//! Starting a real gateway in-process on 127.0.0.1:0 for integration tests, plus admin helpers.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use octopus::app::Gateway;
use octopus::config::Config;
use octopus::relay::record::RequestRecord;

use crate::support::databases::TestDatabase;
use crate::support::http_client::json_request;

/// Finished-request records the in-process gateway keeps for `wait_for_records`.
const KEPT_RECORDS: usize = 200;

/// A running gateway and what a test needs to talk to it.
pub struct TestGateway {
    pub gateway: Option<Gateway>,
    pub address: SocketAddr,
    /// The configuration it was started with (port 0), for restarts and second nodes.
    pub config: Config,
    /// Keeps the database alive (and drops it at the end) for server backends.
    pub database: TestDatabase,
}

impl TestGateway {
    /// Starts a gateway on the given database with test-friendly settings, adjusted by `tweak`.
    pub fn start_with(database: TestDatabase, tweak: impl FnOnce(&mut Config)) -> TestGateway {
        let mut config = Config::default();
        config.server.host = "127.0.0.1".to_string();
        config.server.port = 0;
        config.database.database_type = database.database_type.to_string();
        config.database.path = database.path.clone();
        config.database.connections = 2;
        config.log.level = "warn".to_string();
        // Probes would add requests to the mocks at unpredictable times; the probe tests turn them on.
        config.relay.probe_interval_seconds = 0;
        tweak(&mut config);
        // Keep tests hermetic: the price sync at start must not reach models.dev. Port 9 (discard)
        // on loopback refuses at once; tests of the sync point the setting at their own server.
        let mut store = octopus::store::open(&config.database.database_type, &config.database.path).expect("open the test database");
        store.set_setting("setting.models_dev_url", "\"http://127.0.0.1:9\"").expect("seed models_dev_url");
        drop(store);
        let gateway = octopus::app::start_keeping_records(config.clone(), KEPT_RECORDS).unwrap_or_else(|error| panic!("gateway failed to start: {error}"));
        let address = gateway.local_addr();
        TestGateway { gateway: Some(gateway), address, config, database }
    }

    /// Stops the gateway (writing its statistics and logs) and starts a new one on the same
    /// database, as a restart of the process would.
    pub fn restart(&mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown();
        }
        let gateway = octopus::app::start_keeping_records(self.config.clone(), KEPT_RECORDS).unwrap_or_else(|error| panic!("gateway failed to restart: {error}"));
        self.address = gateway.local_addr();
        self.gateway = Some(gateway);
    }

    /// Another gateway node on the same database (several nodes sharing PostgreSQL or MySQL).
    pub fn second_node(&self) -> Gateway {
        octopus::app::start_keeping_records(self.config.clone(), KEPT_RECORDS).unwrap_or_else(|error| panic!("second node failed to start: {error}"))
    }

    pub fn running(&self) -> &Gateway {
        self.gateway.as_ref().expect("the gateway is running")
    }

    pub fn start(database: TestDatabase) -> TestGateway {
        TestGateway::start_with(database, |_| {})
    }

    /// Logs in as admin/admin and returns the token, leaving the first-start password as it is
    /// (half the password hashing of `admin_token`, for tests that only need to configure).
    pub fn login_token(&self) -> String {
        let login = json_request(self.address, "POST", "/api/v1/auth/login", None, Some(&json!({"username": "admin", "password": "admin"})));
        assert_eq!(login.status, 200, "login: {}", login.text());
        login.json()["token"].as_str().unwrap().to_string()
    }

    /// Logs in with the password `admin_token` set (after a restart).
    pub fn login_token_after_change(&self) -> String {
        let login = json_request(self.address, "POST", "/api/v1/auth/login", None, Some(&json!({"username": "admin", "password": "a-better-password"})));
        assert_eq!(login.status, 200, "login: {}", login.text());
        login.json()["token"].as_str().unwrap().to_string()
    }

    /// Logs in as admin/admin, changes the password, and returns a working token.
    pub fn admin_token(&self) -> String {
        let login = json_request(self.address, "POST", "/api/v1/auth/login", None, Some(&json!({"username": "admin", "password": "admin"})));
        assert_eq!(login.status, 200, "login: {}", login.text());
        let token = login.json()["token"].as_str().unwrap().to_string();
        let changed = json_request(
            self.address,
            "POST",
            "/api/v1/auth/password",
            Some(&token),
            Some(&json!({"old_password": "admin", "new_password": "a-better-password"})),
        );
        assert_eq!(changed.status, 200, "password change: {}", changed.text());
        changed.json()["token"].as_str().unwrap().to_string()
    }

    /// POSTs JSON with the token and returns the parsed body, asserting the status.
    pub fn admin_post(&self, token: &str, path: &str, body: Value, expected_status: u16) -> Value {
        let response = json_request(self.address, "POST", path, Some(token), Some(&body));
        assert_eq!(response.status, expected_status, "POST {path}: {}", response.text());
        response.json()
    }

    /// Creates a channel and returns its id.
    pub fn create_channel(&self, token: &str, body: Value) -> i64 {
        self.admin_post(token, "/api/v1/channels", body, 201)["id"].as_i64().unwrap()
    }

    /// Creates a group and returns its id.
    pub fn create_group(&self, token: &str, body: Value) -> i64 {
        self.admin_post(token, "/api/v1/groups", body, 201)["id"].as_i64().unwrap()
    }

    /// The relay's finished-request records, oldest first, once at least `count` exist. The
    /// relay hands records to a consumer thread, so they appear shortly after the response
    /// (a streamed one only after its last byte): this polls for up to 3 s.
    pub fn wait_for_records(&self, count: usize) -> Vec<RequestRecord> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let records = self.gateway.as_ref().expect("the gateway is running").relay.recent.snapshot();
            if records.len() >= count || Instant::now() >= deadline {
                assert!(records.len() >= count, "expected {count} request records, got {}: {records:#?}", records.len());
                return records;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Creates a client key and returns the secret.
    pub fn create_client_key(&self, token: &str, body: Value) -> String {
        self.admin_post(token, "/api/v1/api-keys", body, 201)["key"].as_str().unwrap().to_string()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown();
        }
    }
}
