//! A ureq resolver that never blocks a coroutine: IP literals are answered inline, host names
//! are looked up with getaddrinfo on a small pool of std threads, and answers are cached.
//!
//! getaddrinfo blocks its thread for as long as DNS takes; on a may worker that would stall
//! every coroutine of the worker. The coroutine instead waits on a may channel, which parks
//! only itself.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
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
/// Lookup threads; each serves one getaddrinfo call at a time.
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
        let host = uri
            .host()
            .ok_or_else(|| ureq::Error::BadUri("missing host".to_string()))?;
        let port = uri
            .port_u16()
            .or_else(|| default_port(uri.scheme_str()))
            .ok_or_else(|| ureq::Error::BadUri("unknown scheme".to_string()))?;
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');

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

fn default_port(scheme: Option<&str>) -> Option<u16> {
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
    if lookup_queue().send(job).is_err() {
        return Err(
            TransportFailure::Connect("the DNS lookup threads are gone".to_string())
                .into_ureq_error(),
        );
    }
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

/// The queue of the lookup pool, started on first use and kept for the life of the process.
fn lookup_queue() -> &'static crossbeam_channel::Sender<LookupJob> {
    static QUEUE: OnceLock<crossbeam_channel::Sender<LookupJob>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (sender, receiver) = crossbeam_channel::unbounded::<LookupJob>();
        for thread_index in 0..LOOKUP_THREADS {
            let receiver = receiver.clone();
            let spawned = thread::Builder::new()
                .name(format!("octopus-dns-{thread_index}"))
                .spawn(move || {
                    for job in receiver {
                        let answer = (job.host.as_str(), job.port)
                            .to_socket_addrs()
                            .map(|addrs| addrs.collect::<Vec<_>>());
                        // The caller may have given up waiting; nothing to do then.
                        let _ = job.reply.send(answer);
                    }
                });
            if let Err(error) = spawned {
                log::error!("cannot start DNS lookup thread {thread_index}: {error}");
            }
        }
        sender
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
