//! Upstream HTTP client: ureq over a may-aware transport, per-channel-type URLs and auth.
