//! `StorePool`: a few std threads, each owning one `Store`, that run closures for coroutines
//! and plain threads alike.
//!
//! Database drivers block, so they must never run on a may worker thread. A caller sends a job
//! over a crossbeam channel to whichever pool thread is free and waits for the answer on a
//! `may::sync::mpsc` channel: inside a coroutine that wait parks only the coroutine, on a plain
//! thread it blocks the thread.

use std::panic::{self, AssertUnwindSafe};
use std::thread;

use crate::store::{self, Store, StoreError, StoreResult};

/// The most connections a pool opens to one SQLite file: SQLite has a single writer anyway,
/// and a few readers cover an admin panel and the background threads.
const MAX_SQLITE_CONNECTIONS: usize = 4;
/// A ceiling for server databases, so a typo in the config cannot open hundreds of connections.
const MAX_SERVER_CONNECTIONS: usize = 64;

type Job = Box<dyn FnOnce(&mut dyn Store) + Send>;

/// A handle to the pool; clones share the same threads. The threads end (closing their
/// connections) once every clone is dropped and the queued jobs are done.
#[derive(Clone)]
pub struct StorePool {
    // Unbounded on purpose: every caller waits for its own answer, so the queue never holds
    // more jobs than there are waiting callers, and a bounded send could block a coroutine's
    // worker thread.
    job_sender: crossbeam_channel::Sender<Job>,
    backend_name: &'static str,
}

impl StorePool {
    /// Opens `connections` stores of `database_type` (`sqlite`, `postgres` or `mysql`) at
    /// `path_or_url` and starts one thread per store. The first store applies the migrations.
    /// SQLite is limited to 4 connections (an in-memory database to 1, since each connection
    /// would see its own); at least one connection is always opened.
    ///
    /// Blocks while connecting: call it at startup on a std thread, not on a coroutine.
    pub fn open(
        database_type: &str,
        path_or_url: &str,
        connections: usize,
    ) -> StoreResult<StorePool> {
        let connection_count = match database_type {
            "sqlite" if path_or_url == ":memory:" => 1,
            "sqlite" => connections.clamp(1, MAX_SQLITE_CONNECTIONS),
            _ => connections.clamp(1, MAX_SERVER_CONNECTIONS),
        };
        let mut stores = Vec::with_capacity(connection_count);
        for _ in 0..connection_count {
            stores.push(store::open(database_type, path_or_url)?);
        }
        let backend_name = stores[0].backend_name();
        let (job_sender, job_receiver) = crossbeam_channel::unbounded::<Job>();
        for (thread_index, store) in stores.into_iter().enumerate() {
            let job_receiver = job_receiver.clone();
            let (database_type, path_or_url) = (database_type.to_string(), path_or_url.to_string());
            let reopen = move || store::open(&database_type, &path_or_url);
            thread::Builder::new()
                .name(format!("store-{thread_index}"))
                .spawn(move || serve_jobs(store, job_receiver, reopen))
                .map_err(|error| {
                    StoreError::Backend(format!("cannot start a store thread: {error}"))
                })?;
        }
        Ok(StorePool {
            job_sender,
            backend_name,
        })
    }

    /// Runs `job` on a pool thread and returns its result.
    ///
    /// Callable from coroutines (the coroutine parks while it waits) and from plain threads.
    /// If the job panics, the panic is caught on the pool thread, which keeps serving, and is
    /// resumed here in the caller: a bug in a job fails that caller (an HTTP handler turns it
    /// into a 500) but never takes a connection out of the pool.
    pub fn call<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut dyn Store) -> T + Send + 'static,
    ) -> T {
        let (reply_sender, reply_receiver) = may::sync::mpsc::channel();
        let wrapped_job: Job = Box::new(move |store: &mut dyn Store| {
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| job(store)));
            // The caller may have gone away (its coroutine was cancelled); nothing to do then.
            let _ = reply_sender.send(outcome);
        });
        if self.job_sender.send(wrapped_job).is_err() {
            panic!("the store pool has no running threads");
        }
        match reply_receiver.recv() {
            Ok(Ok(value)) => value,
            Ok(Err(panic_payload)) => panic::resume_unwind(panic_payload),
            Err(_) => panic!("a store pool thread stopped before answering"),
        }
    }

    /// `sqlite`, `postgres` or `mysql`.
    pub fn backend_name(&self) -> &'static str {
        self.backend_name
    }
}

/// The body of one pool thread: run jobs until every `StorePool` handle is gone.
///
/// After a job that found the server connection gone, the thread opens a new one (at most once a
/// second), so a restarted PostgreSQL or MySQL is used again without restarting the gateway;
/// until then the jobs fail with the driver's error, which their callers retry or report.
fn serve_jobs(
    mut store: Box<dyn Store>,
    job_receiver: crossbeam_channel::Receiver<Job>,
    reopen: impl Fn() -> StoreResult<Box<dyn Store>>,
) {
    // Database work is admin calls and batched statistics: never more urgent than relaying.
    crate::util::lower_this_thread_priority();
    let mut last_reopen_attempt: Option<std::time::Instant> = None;
    for job in job_receiver {
        job(store.as_mut());
        let may_try = last_reopen_attempt.is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(1));
        if may_try && store.connection_lost() {
            last_reopen_attempt = Some(std::time::Instant::now());
            match reopen() {
                Ok(reopened) => {
                    log::warn!("the {} connection was lost; reconnected", reopened.backend_name());
                    store = reopened;
                }
                Err(error) => log::warn!("the database connection was lost and reconnecting failed (will retry): {error}"),
            }
        }
    }
}
