//! Shared test support: the real binary as a child process, an HTTP client, a mock upstream, fresh databases, an in-process gateway,
//! for relay tests the client-protocol lanes and a ready gateway fixture, and for the conversion
//! matrix strict per-protocol validators and scripted upstream answers.

pub mod binary;
pub mod databases;
pub mod gateway;
pub mod http_client;
pub mod lanes;
pub mod mock_upstream;
pub mod relay_fixture;
pub mod shared_fixtures;
pub mod wire;
pub mod wire_client;
pub mod wire_upstream;
