//! The octopus gateway as a library: the binary in `main.rs` and the integration tests both drive it.

pub mod allocator;
pub mod amp;
pub mod api;
pub mod app;
pub mod commands;
pub mod config;
#[doc(hidden)]
pub mod fuzz_entry;
pub mod http;
pub mod logging;
pub mod may_io;
pub mod protocol;
pub mod relay;
pub mod settings;
pub mod stats;
pub mod store;
pub mod sync;
pub mod upstream;
pub mod util;
