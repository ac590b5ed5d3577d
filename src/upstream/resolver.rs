//! A ureq resolver that never blocks a coroutine: IP literals are answered inline, host names
//! are looked up with getaddrinfo on a small pool of std threads that start as lookups need them
//! and end when idle, and answers are cached.
//!
//! getaddrinfo blocks its thread for as long as DNS takes; on a may worker that would stall
//! every coroutine of the worker. The coroutine instead waits on a may channel, which parks
//! only itself.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use std::{fmt, io, thread};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;
use ureq::unversioned::transport::time::Duration as UreqDuration;

use crate::upstream::error::TransportFailure;

/// How long a looked-up answer is reused.
const CACHE_TTL: Duration = Duration::from_secs(60);
/// At most this many names are cached; a full cache is emptied (names are few in practice).
const CACHE_CAPACITY: usize = 512;
/// At most this many lookup threads; each serves one getaddrinfo call at a time.
const LOOKUP_THREADS: usize = 4;
/// ureq keeps at most this many addresses per name.
const MAX_ADDRESSES: usize = 16;

/// The resolver shared by all agents of an `UpstreamClient`. Clones share the cache.
#[derive(Clone, Default)]
pub(crate) struct CachingResolver {
    cache: Arc<Mutex<HashMap<String, CachedAnswer>>>,
}

struct CachedAnswer {
    looked_up_at: Instant,
    addrs: Vec<SocketAddr>,
}

impl Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &Uri,
        _config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let authority = uri
            .authority()
            .ok_or_else(|| ureq::Error::BadUri("missing host".to_string()))?;
        let (bare_host, named_port) = host_and_port(authority.as_str());
        let port = named_port
            .or_else(|| default_port(uri.scheme_str()))
            .ok_or_else(|| ureq::Error::BadUri("unknown scheme".to_string()))?;

        let mut resolved = self.empty();
        if let Ok(ip) = bare_host.parse::<IpAddr>() {
            resolved.push(SocketAddr::new(ip, port));
            return Ok(resolved);
        }

        let cache_key = format!("{bare_host}:{port}");
        let addrs = match self.cached(&cache_key) {
            Some(addrs) => addrs,
            None => {
                let addrs = look_up_off_thread(bare_host, port, timeout)?;
                self.remember(cache_key, addrs.clone());
                addrs
            }
        };
        for addr in addrs.into_iter().take(MAX_ADDRESSES) {
            resolved.push(addr);
        }
        Ok(resolved)
    }
}

/// A URI's authority without its user info (`user:password@`), if it has any.
pub(crate) fn without_user_info(authority: &str) -> &str {
    let after_user_info = memchr::memrchr(b'@', authority.as_bytes()).map_or(0, |at| at + 1);
    &authority[after_user_info..]
}

/// The host of a URI's authority (an IPv6 address without its brackets) and the port it names.
/// The http crate's `host()` and `port_u16()` split the authority with char searchers, about 400
/// instructions a call (callgrind), and a call on a pooled connection is resolved every time.
/// The TLS server name and the SOCKS target are split here too.
pub(crate) fn host_and_port(authority: &str) -> (&str, Option<u16>) {
    let host_and_port = without_user_info(authority);
    let (host, port) = match host_and_port.strip_prefix('[') {
        Some(bracketed) => match memchr::memchr(b']', bracketed.as_bytes()) {
            Some(end) => (&bracketed[..end], bracketed[end + 1..].strip_prefix(':')),
            None => (bracketed, None),
        },
        None => match memchr::memchr(b':', host_and_port.as_bytes()) {
            Some(colon) => (&host_and_port[..colon], Some(&host_and_port[colon + 1..])),
            None => (host_and_port, None),
        },
    };
    (host, port.and_then(|port| port.parse().ok()))
}

impl CachingResolver {
    /// The addresses of `host` (an IP literal, or a name looked up off-thread and cached).
    pub(crate) fn resolve_host(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Vec<SocketAddr>, ureq::Error> {
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare_host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let cache_key = format!("{bare_host}:{port}");
        if let Some(addrs) = self.cached(&cache_key) {
            return Ok(addrs);
        }
        let limit = NextTimeout {
            after: UreqDuration::Exact(timeout),
            reason: ureq::Timeout::Resolve,
            ..NextTimeout::default()
        };
        let addrs = look_up_off_thread(bare_host, port, limit)?;
        self.remember(cache_key, addrs.clone());
        Ok(addrs)
    }

    fn cached(&self, cache_key: &str) -> Option<Vec<SocketAddr>> {
        let cache = self.lock_cache();
        let answer = cache.get(cache_key)?;
        (answer.looked_up_at.elapsed() < CACHE_TTL).then(|| answer.addrs.clone())
    }

    fn remember(&self, cache_key: String, addrs: Vec<SocketAddr>) {
        let mut cache = self.lock_cache();
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, answer| answer.looked_up_at.elapsed() < CACHE_TTL);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(
            cache_key,
            CachedAnswer {
                looked_up_at: Instant::now(),
                addrs,
            },
        );
    }

    fn lock_cache(&self) -> MutexGuard<'_, HashMap<String, CachedAnswer>> {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl fmt::Debug for CachingResolver {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("CachingResolver").finish()
    }
}

/// The port a URL's scheme implies when its authority names none.
pub(crate) fn default_port(scheme: Option<&str>) -> Option<u16> {
    match scheme? {
        "http" => Some(80),
        "https" => Some(443),
        "socks4" | "socks4a" | "socks" | "socks5" | "socks5h" => Some(1080),
        _ => None,
    }
}

struct LookupJob {
    host: String,
    port: u16,
    reply: may::sync::mpsc::Sender<io::Result<Vec<SocketAddr>>>,
}

/// Hands the lookup to the thread pool and parks the calling coroutine (or thread) until the
/// answer arrives or the resolve deadline passes. A lookup that outlives its deadline finishes
/// on its thread and the answer is dropped.
fn look_up_off_thread(
    host: &str,
    port: u16,
    timeout: NextTimeout,
) -> Result<Vec<SocketAddr>, ureq::Error> {
    let (reply, answer) = may::sync::mpsc::channel();
    let job = LookupJob {
        host: host.to_string(),
        port,
        reply,
    };
    lookup_pool().submit(job);
    let received = match timeout.after {
        UreqDuration::Exact(limit) => answer.recv_timeout(limit).map_err(|error| match error {
            std::sync::mpsc::RecvTimeoutError::Timeout => ureq::Error::Timeout(timeout.reason),
            std::sync::mpsc::RecvTimeoutError::Disconnected => lookup_thread_died(),
        })?,
        UreqDuration::NotHappening => answer.recv().map_err(|_| lookup_thread_died())?,
    };
    match received {
        Ok(addrs) if addrs.is_empty() => Err(TransportFailure::Connect(format!(
            "cannot resolve {host}: no addresses"
        ))
        .into_ureq_error()),
        Ok(addrs) => Ok(addrs),
        Err(error) => Err(
            TransportFailure::Connect(format!("cannot resolve {host}: {error}")).into_ureq_error(),
        ),
    }
}

fn lookup_thread_died() -> ureq::Error {
    TransportFailure::Connect("the DNS lookup thread stopped".to_string()).into_ureq_error()
}

/// The lookup threads: started when a lookup finds none free (up to `LOOKUP_THREADS`), ended
/// after `LOOKUP_THREAD_IDLE_EXIT` without one. Names are looked up rarely (answers are cached,
/// and channels are few), so an idle gateway keeps no lookup thread: each held a stack and its
/// own allocator pages, about 0.3 MiB for the four this pool used to keep for good.
#[derive(Default)]
struct LookupPool {
    state: Mutex<LookupPoolState>,
    job_waiting: Condvar,
}

#[derive(Default)]
struct LookupPoolState {
    queue: VecDeque<LookupJob>,
    /// Threads waiting for a job (counted until they have woken and looked at the queue).
    idle: usize,
    threads: usize,
}

/// A lookup thread with no job for this long ends.
const LOOKUP_THREAD_IDLE_EXIT: Duration = if cfg!(test) { Duration::from_millis(200) } else { Duration::from_secs(30) };

impl LookupPool {
    fn lock(&self) -> MutexGuard<'_, LookupPoolState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `job` and starts a thread for it when the threads free to take it are fewer than
    /// the jobs waiting. A job that finds no thread at all and cannot start one is dropped,
    /// which its caller sees as its answer channel closing.
    fn submit(&'static self, job: LookupJob) {
        let mut state = self.lock();
        state.queue.push_back(job);
        if state.queue.len() > state.idle && state.threads < LOOKUP_THREADS {
            state.threads += 1;
            let spawned = thread::Builder::new()
                .name("octopus-dns".to_string())
                .spawn(move || self.serve());
            if let Err(error) = spawned {
                log::error!("cannot start a DNS lookup thread: {error}");
                state.threads -= 1;
                if state.threads == 0 {
                    state.queue.clear();
                }
            }
        }
        self.job_waiting.notify_one();
    }

    /// The body of a lookup thread.
    fn serve(&self) {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.queue.pop_front() {
                drop(state);
                let answer = (job.host.as_str(), job.port).to_socket_addrs().map(|addrs| addrs.collect::<Vec<_>>());
                // The caller may have given up waiting; nothing to do then.
                let _ = job.reply.send(answer);
                state = self.lock();
                continue;
            }
            state.idle += 1;
            let (woken, wait) = self
                .job_waiting
                .wait_timeout(state, LOOKUP_THREAD_IDLE_EXIT)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            state = woken;
            state.idle -= 1;
            // A job queued as the wait ran out is still this thread's to take: its submitter
            // counted this thread as free and started none.
            if wait.timed_out() && state.queue.is_empty() {
                state.threads -= 1;
                return;
            }
        }
    }
}

fn lookup_pool() -> &'static LookupPool {
    static POOL: OnceLock<LookupPool> = OnceLock::new();
    POOL.get_or_init(LookupPool::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_agree_with_the_http_crate() {
        for url in [
            "http://127.0.0.1:8080/v1",
            "https://api.openai.com/v1",
            "https://api.openai.com:443/v1",
            "http://user:secret@example.com:81/",
            "http://user@example.com/",
            "http://[::1]:9000/x",
            "https://[2001:db8::1]/x",
            "http://localhost/",
        ] {
            let uri: Uri = url.parse().unwrap();
            let (host, port) = host_and_port(uri.authority().unwrap().as_str());
            let expected_host = uri.host().unwrap().trim_start_matches('[').trim_end_matches(']');
            assert_eq!((host, port), (expected_host, uri.port_u16()), "{url}");
        }
    }

    fn new_pool() -> &'static LookupPool {
        Box::leak(Box::default())
    }

    fn submit_lookup(pool: &'static LookupPool) -> may::sync::mpsc::Receiver<io::Result<Vec<SocketAddr>>> {
        let (reply, answer) = may::sync::mpsc::channel();
        pool.submit(LookupJob { host: "localhost".to_string(), port: 80, reply });
        answer
    }

    fn wait_for_threads(pool: &LookupPool, count: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        while pool.lock().threads != count && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        pool.lock().threads
    }

    #[test]
    fn lookup_threads_start_for_lookups_and_end_when_idle() {
        let pool = new_pool();
        assert_eq!(pool.lock().threads, 0, "a pool starts no thread before its first lookup");
        let answer = submit_lookup(pool);
        assert!(!answer.recv_timeout(Duration::from_secs(30)).unwrap().unwrap().is_empty());
        assert_eq!(wait_for_threads(pool, 0), 0, "the idle lookup thread never ended");
        // A lookup after the last thread ended starts a new one.
        let answer = submit_lookup(pool);
        assert!(!answer.recv_timeout(Duration::from_secs(30)).unwrap().unwrap().is_empty());
    }

    #[test]
    fn lookups_at_once_start_at_most_the_thread_limit_and_all_are_answered() {
        let pool = new_pool();
        let answers: Vec<_> = (0..3 * LOOKUP_THREADS).map(|_| submit_lookup(pool)).collect();
        let threads = pool.lock().threads;
        assert!((1..=LOOKUP_THREADS).contains(&threads), "{threads} lookup threads");
        for answer in answers {
            assert!(!answer.recv_timeout(Duration::from_secs(30)).unwrap().unwrap().is_empty());
        }
        assert_eq!(wait_for_threads(pool, 0), 0);
    }

    fn resolve(resolver: &CachingResolver, url: &str) -> Result<Vec<SocketAddr>, ureq::Error> {
        let uri: Uri = url.parse().unwrap();
        let config = Config::default();
        let resolved = resolver.resolve(&uri, &config, NextTimeout::default())?;
        Ok(resolved.iter().copied().collect())
    }

    #[test]
    fn ip_literals_are_answered_inline_with_default_ports() {
        let resolver = CachingResolver::default();
        assert_eq!(
            resolve(&resolver, "http://127.0.0.1/x").unwrap(),
            vec!["127.0.0.1:80".parse().unwrap()]
        );
        assert_eq!(
            resolve(&resolver, "https://[::1]:8443/").unwrap(),
            vec!["[::1]:8443".parse().unwrap()]
        );
        assert_eq!(
            resolve(&resolver, "socks5h://10.0.0.1").unwrap(),
            vec!["10.0.0.1:1080".parse().unwrap()]
        );
        assert!(resolver.lock_cache().is_empty());
    }

    #[test]
    fn names_are_looked_up_and_cached() {
        let resolver = CachingResolver::default();
        let addrs = resolve(&resolver, "http://localhost:8080/").unwrap();
        assert!(!addrs.is_empty());
        assert!(
            addrs
                .iter()
                .all(|addr| addr.port() == 8080 && addr.ip().is_loopback())
        );
        assert!(resolver.lock_cache().contains_key("localhost:8080"));
        assert_eq!(resolve(&resolver, "http://localhost:8080/").unwrap(), addrs);
    }
}
