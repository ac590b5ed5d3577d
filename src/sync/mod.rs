//! Background and on-demand synchronisation with upstreams: channel model lists and endpoint probes.

pub mod endpoint_probe;
pub mod jobs;
pub mod model_sync;
pub mod scheduler;
