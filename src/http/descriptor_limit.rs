//! The process's limit on open file descriptors: raised to the hard limit at start, and the
//! default connection cap derived from it.
//!
//! Every client connection is a descriptor, and so is every upstream socket, database
//! connection, log file and the runtime's own epoll and listeners. When descriptors run out,
//! accept() fails and the gateway can open neither upstream sockets nor files, so the connection
//! cap leaves room for the rest.

use std::io;

use crate::http::admission::{MAX_CONNECTIONS_BEING_SHED, MAX_EVICTED_NOT_YET_CLOSED};

/// Descriptors kept for everything that is not a client connection or its upstream socket:
/// the store pool, SQLite's journal files, listeners, epoll, the log, the spare descriptor of
/// the accept loop, connections being shed, and evicted connections not closed yet.
const RESERVED_DESCRIPTORS: u64 = 128 + (MAX_CONNECTIONS_BEING_SHED + MAX_EVICTED_NOT_YET_CLOSED) as u64;
/// The derived cap never goes above this: past it, memory (about 17 KiB per idle connection,
/// see docs/security.md) matters more than descriptors, and an admin who wants more says so.
const DERIVED_CAP_CEILING: u64 = 16_384;
/// The derived cap never goes below this, however low the descriptor limit.
const DERIVED_CAP_FLOOR: u64 = 16;

/// The soft and hard RLIMIT_NOFILE before and after raising the soft limit to the hard one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorLimits {
    pub soft_before: u64,
    pub soft_after: u64,
    pub hard: u64,
}

/// Raises the soft descriptor limit to the hard limit (a process may do this without
/// privileges). Systems often start services with a soft limit of 1024 and a much higher hard
/// limit, and 1024 connections is not much for a gateway.
pub fn raise_to_hard_limit() -> io::Result<DescriptorLimits> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let soft_before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: `raised` is a valid rlimit that does not exceed the hard limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(DescriptorLimits { soft_before, soft_after: limit.rlim_cur, hard: limit.rlim_max })
}

/// The soft descriptor limit in force now.
pub fn current_soft_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_cur
}

/// The connection cap used when `server.max_connections` is 0: half of what the reserve leaves
/// (each client connection may hold an upstream socket while it is relayed), between 16 and
/// 16384.
pub fn default_max_connections(descriptor_limit: u64) -> usize {
    let available = descriptor_limit.saturating_sub(RESERVED_DESCRIPTORS) / 2;
    available.clamp(DERIVED_CAP_FLOOR, DERIVED_CAP_CEILING) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_leaves_a_reserve_and_room_for_upstream_sockets() {
        assert_eq!(default_max_connections(1024), (1024 - 256) / 2);
        assert_eq!(default_max_connections(100), 16);
        assert_eq!(default_max_connections(1 << 20), 16_384);
        assert!(current_soft_limit() > 0);
    }
}
