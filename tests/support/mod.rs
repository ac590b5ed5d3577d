//! Shared test support: an HTTP client, a mock upstream, fresh databases and an in-process gateway.

pub mod databases;
pub mod gateway;
pub mod http_client;
pub mod mock_upstream;
pub mod shared_fixtures;
pub mod wire;
pub mod wire_client;
pub mod wire_upstream;
