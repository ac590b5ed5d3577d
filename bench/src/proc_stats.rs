//! Process facts from /proc (resident memory, CPU time) and the file-descriptor limit.

/// A process's resident memory in KiB: all of it (VmRSS) and its anonymous part (RssAnon: heap,
/// stacks, buffers). The rest is mostly file-backed pages of the binary and the shared libraries,
/// which the kernel maps around every page fault (fault-around) and may drop and reread under
/// memory pressure, so the anonymous part is what the process itself holds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Resident {
    pub total_kib: u64,
    pub anonymous_kib: u64,
}

/// The resident memory of `pid`, or None when the process is gone.
pub fn resident(pid: u32) -> Option<Resident> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Resident { total_kib: status_kib(&status, "VmRSS:")?, anonymous_kib: status_kib(&status, "RssAnon:")? })
}

/// The value (KiB) of the line of `/proc/PID/status` that starts with `name`.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(name))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets the peak resident size the kernel keeps for `pid` (`VmHWM`) to its current size, so
/// that `peak_resident_kib` then reports the peak from this moment on. False when the process is
/// gone or its `clear_refs` cannot be written.
pub fn reset_peak_resident(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// The peak resident size of `pid` (KiB) since it started or since `reset_peak_resident`.
pub fn peak_resident_kib(pid: u32) -> Option<u64> {
    status_kib(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?, "VmHWM:")
}

/// User plus system CPU time consumed so far by `pid` (all its threads), in microseconds.
pub fn cpu_micros(pid: u32) -> Option<u64> {
    stat_cpu_micros(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// User plus system CPU time consumed so far by one thread of the bench itself, in
/// microseconds. (`/proc/<thread id>/stat` would answer for the whole process.)
pub fn own_thread_cpu_micros(thread_id: u32) -> Option<u64> {
    stat_cpu_micros(&std::fs::read_to_string(format!("/proc/self/task/{thread_id}/stat")).ok()?)
}

/// CPU time consumed so far by each thread of `pid` (microseconds), with the thread's name.
/// Threads that ended are not listed: their time is only in the process's total.
pub fn thread_cpu_micros(pid: u32) -> Vec<(String, u64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .filter_map(|task| {
            let directory = task.ok()?.path();
            let name = std::fs::read_to_string(directory.join("comm")).ok()?.trim_end().to_string();
            let cpu = stat_cpu_micros(&std::fs::read_to_string(directory.join("stat")).ok()?)?;
            Some((name, cpu))
        })
        .collect()
}

/// utime plus stime of a /proc `stat` line, in microseconds.
fn stat_cpu_micros(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses, so fields are counted
    // from the last ')'. After it come field 3 (state) onwards; utime and stime are fields
    // 14 and 15, i.e. the 12th and 13th words here.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user_ticks: u64 = fields.next()?.parse().ok()?;
    let system_ticks: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks_per_second <= 0 {
        return None;
    }
    Some((user_ticks + system_ticks) * 1_000_000 / ticks_per_second as u64)
}

/// Raises the soft open-file limit towards `wanted` (never above the hard limit) and returns
/// the soft limit now in force. The gateway subprocess inherits it.
pub fn raise_fd_limit(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    let target = wanted.min(limit.rlim_max);
    if limit.rlim_cur < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit within the hard limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return target;
        }
    }
    limit.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_resident_size_follows_a_burst_and_starts_again_after_a_reset() {
        let pid = std::process::id();
        assert!(reset_peak_resident(pid), "this process's clear_refs is writable");
        let before = resident(pid).unwrap().total_kib;
        // 16 MiB mapped, touched and unmapped, straight from the kernel: an allocator might keep
        // freed memory and leave nothing for the reset to bring the peak down to.
        let bytes = 16 * 1024 * 1024;
        // SAFETY: a fresh private anonymous mapping, written within its length and unmapped once.
        unsafe {
            let burst = libc::mmap(std::ptr::null_mut(), bytes, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
            assert_ne!(burst, libc::MAP_FAILED);
            std::ptr::write_bytes(burst.cast::<u8>(), 1, bytes);
            assert_eq!(libc::munmap(burst, bytes), 0);
        }
        let peak = peak_resident_kib(pid).unwrap();
        assert!(peak >= before + 15 * 1024, "peak {peak} KiB after a 16 MiB burst from {before} KiB");
        assert!(reset_peak_resident(pid));
        let peak_after_reset = peak_resident_kib(pid).unwrap();
        assert!(peak_after_reset < peak - 8 * 1024, "the reset brought the peak ({peak} KiB) down to now: {peak_after_reset} KiB");
    }
}
