//! Shared test support: an HTTP client, a mock upstream, fresh databases, an in-process gateway,
//! and for relay tests the client-protocol lanes and a ready gateway fixture.

pub mod databases;
pub mod gateway;
pub mod http_client;
pub mod lanes;
pub mod mock_upstream;
pub mod relay_fixture;
