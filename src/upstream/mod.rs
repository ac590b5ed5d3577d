//! Upstream HTTP client: ureq over a may-aware transport, per-channel-type URLs and auth.
//!
//! - `buffers`: `ConnectionBuffers`, each connection's input and output, sized by use.
//! - `client`: `UpstreamClient::send`, the one call the relay makes.
//! - `control`: `CallControl`, per-call read deadlines and cancellation.
//! - `endpoint`: URLs and auth headers per channel type (pure functions).
//! - `error`: `UpstreamError`.
//! - `google_oauth`: `AntigravityAuth`, OAuth access tokens and project ids for Antigravity.
//! - `idle_pool`: idle keep-alive connections per host for direct agents, in place of ureq's pool.
//! - `transport`, `socks`, `tls`, `resolver`: the connector chain under ureq. Nothing in them
//!   blocks a may worker thread: sockets are `may::net` streams and DNS runs on std threads.

mod buffers;
pub mod client;
pub mod control;
pub mod endpoint;
pub mod error;
pub mod google_oauth;
mod idle_pool;
mod resolver;
mod socks;
mod tls;
mod transport;
