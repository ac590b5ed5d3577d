//! Background and on-demand synchronisation with upstreams: channel model lists, endpoint probes and
//! the models.dev price catalogue.

pub mod channel_test;
pub mod endpoint_probe;
pub mod jobs;
pub mod model_sync;
pub mod price_sync;
pub mod scheduler;
