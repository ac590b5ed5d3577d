//! Wiring: store, snapshot, threads, server and shutdown.
