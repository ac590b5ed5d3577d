//! The relay: client endpoints, client-key auth, routing, balancing, retries and the circuit breaker.

pub mod balancer;
pub mod breaker;
pub mod endpoint_pick;
pub mod key_pool;
pub mod retry;
pub mod rng;
pub mod sticky;
