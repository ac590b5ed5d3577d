//! `StorePool`: a few std threads, each owning one `Store`, that run closures for coroutines
//! and plain threads alike.
//!
//! Database drivers block, so they must never run on a may worker thread. A caller sends a job
//! over a crossbeam channel to whichever pool thread is free and waits for the answer on a
//! `may::sync::mpsc` channel: inside a coroutine that wait parks only the coroutine, on a plain
//! thread it blocks the thread.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;

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
    /// Gone once every clone is dropped: a spare thread still waiting, or trying to open its
    /// store, then stops.
    shared: Arc<PoolShared>,
    counts: Arc<ThreadCounts>,
}

/// What the threads reach through a `Weak`, so that it goes away with the last handle.
struct PoolShared {
    /// Wakes one spare thread (one that has not opened its store yet); holds a message for
    /// each spare, so sending never blocks.
    spare_wake: crossbeam_channel::Sender<()>,
}

#[derive(Default)]
struct ThreadCounts {
    /// Serving threads waiting for a job, or about to: a thread counts as free from the moment
    /// its job has its answer, so a caller that sends its next job right away does not see
    /// every thread busy.
    idle: AtomicUsize,
    /// Threads that have their store: the connections open.
    serving: AtomicUsize,
    /// Times a thread gave back its connection's caches after a quiet spell.
    caches_released: AtomicUsize,
}

impl StorePool {
    /// Opens `connections` stores of `database_type` (`sqlite`, `postgres` or `mysql`) at
    /// `path_or_url` and starts one thread per store. SQLite is limited to 4 connections (an
    /// in-memory database to 1, since each connection would see its own); at least one
    /// connection is always opened.
    ///
    /// Only the first store is opened here (it applies the migrations, and its errors are the
    /// caller's). The other threads are spares: each opens its store the first time jobs wait
    /// with no serving thread free for longer than a moment (`SPARE_GRACE`), then serves too. A
    /// gateway whose database work never overlaps keeps one connection (each SQLite connection
    /// holds about 390 KB of caches and schema, a tenth of an idle gateway's own memory), and one
    /// that needs more gets them as it does.
    /// A thread whose store cannot be opened logs why and tries again, less and less often,
    /// until the pool is dropped; jobs meanwhile go to the threads already serving.
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
        let first_store = store::open(database_type, path_or_url)?;
        let backend_name = first_store.backend_name();
        let (job_sender, job_receiver) = crossbeam_channel::unbounded::<Job>();
        let (spare_wake, spare_wake_receiver) = crossbeam_channel::bounded::<()>(connection_count);
        let shared = Arc::new(PoolShared { spare_wake });
        // The first thread serves at once: free before it even starts.
        let counts = Arc::new(ThreadCounts { idle: AtomicUsize::new(1), serving: AtomicUsize::new(1), ..ThreadCounts::default() });
        let mut first_store = Some(first_store);
        for thread_index in 0..connection_count {
            let (database_type, path_or_url) = (database_type.to_string(), path_or_url.to_string());
            let reopen = move || store::open(&database_type, &path_or_url);
            let opened = first_store.take();
            let serving = Serving { jobs: job_receiver.clone(), pool: Arc::downgrade(&shared), counts: counts.clone() };
            let spare_wake_receiver = spare_wake_receiver.clone();
            thread::Builder::new()
                .name(format!("store-{thread_index}"))
                .spawn(move || {
                    let store = match opened {
                        Some(store) => store,
                        None => {
                            // A spare: waits until it is needed, or ends with the pool.
                            if !wait_until_needed(&spare_wake_receiver, &serving) {
                                return;
                            }
                            let store = match open_while_pool_alive(&reopen, &serving.pool) {
                                Some(store) => store,
                                None => return,
                            };
                            serving.counts.serving.fetch_add(1, Ordering::SeqCst);
                            serving.counts.idle.fetch_add(1, Ordering::SeqCst);
                            store
                        }
                    };
                    serve_jobs(store, serving, reopen)
                })
                .map_err(|error| {
                    StoreError::Backend(format!("cannot start a store thread: {error}"))
                })?;
        }
        Ok(StorePool {
            job_sender,
            backend_name,
            shared,
            counts,
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
        let counts = self.counts.clone();
        let wrapped_job: Job = Box::new(move |store: &mut dyn Store| {
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| job(store)));
            counts.idle.fetch_add(1, Ordering::SeqCst);
            // The caller may have gone away (its coroutine was cancelled); nothing to do then.
            let _ = reply_sender.send(outcome);
        });
        if self.job_sender.send(wrapped_job).is_err() {
            panic!("the store pool has no running threads");
        }
        // A job waiting while no serving thread is free wakes a spare. (The serving thread that
        // takes a job checks the same after it, which covers the job sent just as the last free
        // thread took another.)
        if self.counts.idle.load(Ordering::SeqCst) == 0 && !self.job_sender.is_empty() {
            let _ = self.shared.spare_wake.try_send(());
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

    /// How many connections are open: the first, and the spares that were needed so far.
    pub fn open_connections(&self) -> usize {
        self.counts.serving.load(Ordering::SeqCst)
    }
}

/// Opens a pool thread's store, trying again after a failure (1 s, doubling to a minute) for as
/// long as the pool exists. `None` when the pool was dropped first.
fn open_while_pool_alive<Pool>(
    open: &impl Fn() -> StoreResult<Box<dyn Store>>,
    pool_alive: &Weak<Pool>,
) -> Option<Box<dyn Store>> {
    let mut pause = Duration::from_secs(1);
    loop {
        if pool_alive.strong_count() == 0 {
            return None;
        }
        match open() {
            Ok(store) => return Some(store),
            Err(error) => {
                log::warn!("a database connection of the pool could not be opened (next try in {} s): {error}", pause.as_secs());
            }
        }
        // Sleeps in short steps so that a dropped pool ends this thread soon.
        let until = Instant::now() + pause;
        while Instant::now() < until && pool_alive.strong_count() > 0 {
            thread::sleep(Duration::from_millis(100));
        }
        pause = (pause * 2).min(Duration::from_secs(60));
    }
}

/// How long a spare waits after a wake before it opens its store: jobs that merely overlap for
/// a moment (the gateway's start runs a few at once) are done by then, and a backlog that
/// lasts is still there.
const SPARE_GRACE: Duration = Duration::from_millis(25);

/// Waits for wakes until jobs are still waiting with no serving thread free a moment after one;
/// false when the pool is gone.
fn wait_until_needed(wakes: &crossbeam_channel::Receiver<()>, serving: &Serving) -> bool {
    loop {
        if wakes.recv().is_err() {
            return false;
        }
        thread::sleep(SPARE_GRACE);
        if serving.counts.idle.load(Ordering::SeqCst) == 0 && !serving.jobs.is_empty() {
            return true;
        }
    }
}

/// What a thread serving jobs holds of its pool.
struct Serving {
    jobs: crossbeam_channel::Receiver<Job>,
    pool: Weak<PoolShared>,
    counts: Arc<ThreadCounts>,
}

/// A pool thread that has had no job for this long gives back its connection's caches
/// (`Store::release_idle_memory`). A gateway is idle most of the time, and SQLite keeps the pages
/// it read (16 KiB each) and the journal of the migrations: measured on the static build, 640 KiB
/// after a first start and 240 KiB after a restart, a tenth of the idle gateway. Under load the
/// statistics writer's flushes keep the thread busier than this, so the caches stay; after a pause
/// the next job reads its pages from the OS's file cache again, which costs microseconds.
const RELEASE_CACHES_AFTER_IDLE: Duration =
    if cfg!(test) { Duration::from_millis(200) } else { Duration::from_secs(3) };

/// The body of one pool thread: run jobs until every `StorePool` handle is gone.
///
/// After a job that found the server connection gone, the thread opens a new one (at most once a
/// second), so a restarted PostgreSQL or MySQL is used again without restarting the gateway;
/// until then the jobs fail with the driver's error, which their callers retry or report.
fn serve_jobs(
    mut store: Box<dyn Store>,
    serving: Serving,
    reopen: impl Fn() -> StoreResult<Box<dyn Store>>,
) {
    // Database work is admin calls and batched statistics: never more urgent than relaying.
    crate::util::lower_this_thread_priority();
    let mut last_reopen_attempt: Option<Instant> = None;
    // Whether a job ran since the caches were last given back.
    let mut holding_caches = true;
    // Counted free already (see `ThreadCounts::idle`): by `StorePool::open` or the spare's wake,
    // and after each job by the job itself, just before its answer.
    loop {
        let waited = if holding_caches {
            serving.jobs.recv_timeout(RELEASE_CACHES_AFTER_IDLE)
        } else {
            serving.jobs.recv().map_err(|_| RecvTimeoutError::Disconnected)
        };
        let job = match waited {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                store.release_idle_memory();
                serving.counts.caches_released.fetch_add(1, Ordering::Relaxed);
                holding_caches = false;
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        holding_caches = true;
        serving.counts.idle.fetch_sub(1, Ordering::SeqCst);
        // More jobs waiting behind this one: a spare should take them.
        if !serving.jobs.is_empty()
            && let Some(pool) = serving.pool.upgrade()
        {
            let _ = pool.spare_wake.try_send(());
        }
        job(store.as_mut());
        let may_try = last_reopen_attempt.is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        if may_try && store.connection_lost() {
            last_reopen_attempt = Some(Instant::now());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::temp_database::TempDatabase;
    use std::sync::Barrier;

    #[test]
    fn spare_connections_open_only_when_jobs_overlap() {
        let database = TempDatabase::new("pool-lazy");
        let pool = StorePool::open("sqlite", &database.path(), 4).unwrap();
        for _ in 0..50 {
            assert!(pool.call(|store| store.has_admin()).is_ok());
        }
        assert_eq!(pool.open_connections(), 1, "one caller at a time needs one connection");
    }

    #[test]
    fn a_quiet_thread_gives_back_its_caches_once_and_serves_on() {
        let database = TempDatabase::new("pool-release");
        let pool = StorePool::open("sqlite", &database.path(), 1).unwrap();
        let released = || pool.counts.caches_released.load(Ordering::Relaxed);
        let wait_for_releases = |count: usize| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while released() < count && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            released()
        };
        assert!(pool.call(|store| store.has_admin()).is_ok());
        assert_eq!(wait_for_releases(1), 1, "the thread never gave back its caches");
        // With no job in between there is nothing more to give back.
        thread::sleep(RELEASE_CACHES_AFTER_IDLE * 3);
        assert_eq!(released(), 1, "an idle thread released again without a job in between");
        assert_eq!(pool.call(|store| store.has_admin()).ok(), Some(false), "the store no longer serves");
        assert_eq!(wait_for_releases(2), 2);
    }

    #[test]
    fn every_thread_serves_once_it_has_opened_its_own_store() {
        let database = TempDatabase::new("pool-all-serve");
        let pool = StorePool::open("sqlite", &database.path(), 4).unwrap();
        // Four jobs that each wait for the other three can only finish if four threads run
        // them at once: the three spares opened their stores and joined in.
        let barrier = Arc::new(Barrier::new(4));
        let (done_sender, done_receiver) = crossbeam_channel::unbounded();
        for _ in 0..4 {
            let (pool, barrier, done_sender) = (pool.clone(), barrier.clone(), done_sender.clone());
            thread::spawn(move || {
                let answered = pool.call(move |store| {
                    barrier.wait();
                    store.has_admin()
                });
                done_sender.send(answered.is_ok()).unwrap();
            });
        }
        for _ in 0..4 {
            assert_eq!(done_receiver.recv_timeout(Duration::from_secs(30)), Ok(true), "a pool thread never served");
        }
        assert_eq!(pool.open_connections(), 4);
    }

    #[test]
    fn a_store_that_fails_to_open_is_tried_again() {
        let alive = Arc::new(());
        let attempts = std::sync::atomic::AtomicUsize::new(0);
        let open = || -> StoreResult<Box<dyn Store>> {
            if attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                return Err(StoreError::Backend("refused".to_string()));
            }
            store::open("sqlite", ":memory:")
        };
        let store = open_while_pool_alive(&open, &Arc::downgrade(&alive));
        assert!(store.is_some());
        assert_eq!(attempts.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    #[test]
    fn a_thread_still_trying_to_open_its_store_ends_with_the_pool() {
        let alive = Arc::new(());
        let pool_alive = Arc::downgrade(&alive);
        let trying = thread::spawn(move || {
            let never = || -> StoreResult<Box<dyn Store>> { Err(StoreError::Backend("refused".to_string())) };
            open_while_pool_alive(&never, &pool_alive).is_none()
        });
        thread::sleep(Duration::from_millis(150));
        drop(alive);
        assert!(trying.join().unwrap(), "the thread gave up without a store once the pool was gone");
    }
}
