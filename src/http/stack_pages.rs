//! Gives the deep pages of a connection coroutine's stack back to the system before the
//! connection settles into a long, shallow phase: a streamed response.
//!
//! A coroutine's stack pages stay resident once touched. Answering a request goes deep (parsing
//! and converting JSON, routing, connecting upstream, reading the first event), while relaying
//! the rest of a stream runs a few frames below the connection's loop. Without this, every open
//! stream would keep the deepest stack its request ever reached, tens of KiB, for as long as the
//! stream lasts. `madvise(MADV_DONTNEED)` on the pages below the current frame drops them; if
//! the stream goes deeper again, the kernel hands it zeroed pages.
//!
//! The stack's bounds are not exposed by may, so they are worked out from where the
//! connection's coroutine started (`StackEntry`, an address near the top of its stack) and the
//! configured stack size. The first release in a process checks that arithmetic against
//! `/proc/self/maps`: the range must lie inside the anonymous read-write mapping that holds the
//! entry, directly above its guard page, and above that mapping's lowest page (where the
//! coroutine library keeps a sentinel it checks when the coroutine ends). If the check fails,
//! releasing is switched off for the life of the process: it is a memory saving, never worth a
//! risk. Where the mappings cannot be read or list nothing (no /proc yet), nothing is released
//! and the next release checks again.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

/// The lowest part of the stack that is never released: it holds the coroutine library's
/// sentinel words, and it leaves room for the frames above the entry mark (the coroutine's
/// start-up frames and the connection function's own frame).
const KEPT_AT_THE_BOTTOM_BYTES: usize = 32 * 1024;
/// Room kept below the stack pointer of the release: the red zone (128 bytes) and the libc
/// wrapper of madvise with its return address, tens of bytes. Every live frame lies above the
/// stack pointer, so this is all the margin safety needs. It is kept small on purpose: a held
/// stream's event loop runs within two pages of the stack's top, and a margin of 4 KiB kept a
/// third page from the top resident for every open stream (with may's sentinel page at the
/// bottom, 16 KiB of stack per stream instead of 12).
const KEPT_BELOW_THE_STACK_POINTER_BYTES: usize = 512;

/// A connection open at least this long gives its coroutine's deeper stack pages back when it
/// ends (`StackEntry::release_at_connection_end`).
const CONNECTION_LONG_ENOUGH_TO_RELEASE_ITS_STACK: Duration = Duration::from_secs(1);

/// The system's page size (4 KiB on x86-64, up to 64 KiB on some arm64 kernels).
fn page_bytes() -> usize {
    static PAGE_BYTES: OnceLock<usize> = OnceLock::new();
    // SAFETY: sysconf only reads a system constant.
    *PAGE_BYTES.get_or_init(|| usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok().filter(|bytes| *bytes > 0).unwrap_or(4096))
}

/// Whether releasing has been checked against the process's mappings yet, and how that went.
static CHECKED: AtomicU8 = AtomicU8::new(UNCHECKED);
/// Whether the log has said once that the layout cannot be checked yet.
static UNKNOWN_LOGGED: AtomicBool = AtomicBool::new(false);
const UNCHECKED: u8 = 0;
const SAFE: u8 = 1;
const OFF: u8 = 2;

/// How many releases this process has made (read by tests).
static RELEASES: AtomicU64 = AtomicU64::new(0);

/// How many times stack pages were released so far in this process.
pub fn releases() -> u64 {
    RELEASES.load(Ordering::Relaxed)
}

/// An address near the top of the current coroutine's stack, taken when its connection began.
#[derive(Debug, Clone, Copy)]
pub struct StackEntry {
    address: usize,
    /// Zero on a plain thread (tests serve connections there too), where nothing is released.
    stack_bytes: usize,
}

impl StackEntry {
    /// No stack to release from (a response written outside a connection, as in tests).
    #[cfg(test)]
    pub const NOWHERE: StackEntry = StackEntry { address: 0, stack_bytes: 0 };

    /// Marks the current frame as the top of the connection's stack. Call it first thing in the
    /// coroutine's function, so that as little as possible lies above the mark.
    #[inline(never)]
    pub fn here() -> StackEntry {
        let marker = 0u8;
        let address = std::ptr::addr_of!(marker) as usize;
        let stack_bytes =
            if may::coroutine::is_coroutine() { may::config().get_stack_size() * std::mem::size_of::<usize>() } else { 0 };
        StackEntry { address, stack_bytes }
    }

    /// Releases the stack pages below the caller's frame, down to the kept bottom. Returns the
    /// range released, if any.
    #[inline(never)]
    pub fn release_deeper_pages(&self) -> Option<std::ops::Range<usize>> {
        if self.stack_bytes == 0 || CHECKED.load(Ordering::Relaxed) == OFF {
            return None;
        }
        let range = release_range(self.address, self.stack_bytes, current_stack_pointer()?)?;
        if CHECKED.load(Ordering::Relaxed) == UNCHECKED {
            match check_against_the_mappings(self.address, self.stack_bytes, &range) {
                StackCheck::Fits => {
                    CHECKED.store(SAFE, Ordering::Relaxed);
                    log::debug!("coroutine stack pages are released below the stack pointer: the stack's layout checked against /proc/self/maps");
                }
                StackCheck::Differs(problem) => {
                    CHECKED.store(OFF, Ordering::Relaxed);
                    log::debug!("coroutine stack pages are not released: the stack's layout is not the expected one ({problem})");
                    return None;
                }
                // Without /proc (a chroot, or a container before its runtime mounts it) nothing
                // is known yet, so nothing is released now, and the next release asks again.
                StackCheck::Unknown(problem) => {
                    if !UNKNOWN_LOGGED.swap(true, Ordering::Relaxed) {
                        log::debug!("coroutine stack pages are not released until the stack's layout can be checked ({problem})");
                    }
                    return None;
                }
            }
        }
        // SAFETY: the range lies inside this coroutine's own stack mapping (checked against the
        // process's mappings once, and computed the same way every time), below every live
        // frame of this coroutine, so nothing there is in use; MADV_DONTNEED on private
        // anonymous memory only makes the pages read back as zeroes.
        unsafe {
            libc::madvise(range.start as *mut libc::c_void, range.end - range.start, libc::MADV_DONTNEED);
        }
        RELEASES.fetch_add(1, Ordering::Relaxed);
        Some(range)
    }

    /// Called last thing by a connection that was open for `connection_age`. Its coroutine goes
    /// back to may's pool, where it may wait a long time for another connection while holding
    /// every stack page its deepest request touched (about 40 KiB; the pool keeps 64, so a
    /// burst of connections left 2.7 MiB behind). Those pages are given back, except after a
    /// short connection: its coroutine is likely to be taken again at once by a client that
    /// connects per request, and would only fault the same pages in again.
    #[inline(never)]
    pub fn release_at_connection_end(&self, connection_age: Duration) -> Option<std::ops::Range<usize>> {
        if connection_age < CONNECTION_LONG_ENOUGH_TO_RELEASE_ITS_STACK {
            return None;
        }
        self.release_deeper_pages()
    }
}

/// The stack pointer where it is called: the lowest address of the caller's frame (an inlined
/// function's frame is its caller's). Releasing is off on architectures not listed here.
#[inline(always)]
fn current_stack_pointer() -> Option<usize> {
    let stack_pointer: usize;
    // SAFETY: copying the stack pointer into a register reads no memory and changes nothing.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::asm!("mov {}, rsp", out(reg) stack_pointer, options(nomem, nostack, preserves_flags));
    }
    #[cfg(any(target_arch = "aarch64", target_arch = "arm"))]
    unsafe {
        std::arch::asm!("mov {}, sp", out(reg) stack_pointer, options(nomem, nostack, preserves_flags));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm")))]
    return None;
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm"))]
    Some(stack_pointer)
}

/// The page-aligned addresses to release, if there are any: from the kept bottom of the stack
/// (which ends at most `stack_bytes` below the entry) to a little below `current`, the stack
/// pointer.
fn release_range(entry: usize, stack_bytes: usize, current: usize) -> Option<std::ops::Range<usize>> {
    let page = page_bytes();
    let lowest = entry.checked_sub(stack_bytes)?.checked_add(KEPT_AT_THE_BOTTOM_BYTES)?;
    let start = lowest.checked_add(page - 1)? / page * page;
    let end = current.checked_sub(KEPT_BELOW_THE_STACK_POINTER_BYTES)? / page * page;
    (end > start && current <= entry).then_some(start..end)
}

/// What `/proc/self/maps` says about a release range.
#[derive(Debug, PartialEq, Eq)]
enum StackCheck {
    /// The range lies where this coroutine's stack must be.
    Fits,
    /// The stack's mapping is there and does not look as expected: the reason, for the log.
    Differs(String),
    /// The mappings cannot be read, or the list is empty (qemu-user's answer when the host's
    /// /proc is missing): the reason, for the log.
    Unknown(String),
}

/// Whether `range` lies in this coroutine's stack mapping, at least one page above its bottom:
/// the anonymous read-write mapping that holds `entry`, directly above its inaccessible guard
/// page (the guard keeps the kernel from merging it with a mapping below, so its start is the
/// stack's bottom), starting no lower than a whole stack below the entry.
fn check_against_the_mappings(entry: usize, stack_bytes: usize, range: &std::ops::Range<usize>) -> StackCheck {
    match std::fs::read_to_string("/proc/self/maps") {
        Ok(maps) => check_range_in_mappings(&maps, entry, stack_bytes, range),
        Err(error) => StackCheck::Unknown(format!("/proc/self/maps cannot be read: {error}")),
    }
}

fn check_range_in_mappings(maps: &str, entry: usize, stack_bytes: usize, range: &std::ops::Range<usize>) -> StackCheck {
    let mappings: Vec<Mapping> = maps.lines().filter_map(parse_mapping).collect();
    if mappings.is_empty() {
        return StackCheck::Unknown("/proc/self/maps lists no mappings".to_owned());
    }
    let Some(index) = mappings.iter().position(|mapping| mapping.range.contains(&entry)) else {
        return StackCheck::Differs(format!("no mapping holds the stack entry {entry:#x}"));
    };
    let stack = &mappings[index];
    let below = index.checked_sub(1).map(|below| &mappings[below]);
    let guarded = below.is_some_and(|below| below.range.end == stack.range.start && below.permissions.starts_with("---"));
    let problem = if !guarded {
        "the mapping below it is not an adjoining guard page"
    } else if !stack.anonymous {
        "it is not anonymous"
    } else if !stack.permissions.starts_with("rw") {
        "it is not read-write"
    } else if stack.range.start < entry.saturating_sub(stack_bytes) {
        "it starts more than a stack size below the entry"
    } else if range.start < stack.range.start + page_bytes() || range.end > entry {
        "the release range is not inside it"
    } else {
        return StackCheck::Fits;
    };
    StackCheck::Differs(format!(
        "{problem}: entry {entry:#x}, stack size {stack_bytes:#x}, release range {range:#x?}, mapping {:#x?} {}, below it {}",
        stack.range,
        stack.permissions,
        below.map_or_else(|| "nothing".to_string(), |below| format!("{:#x?} {}", below.range, below.permissions)),
    ))
}

/// One line of `/proc/self/maps`.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    range: std::ops::Range<usize>,
    permissions: String,
    /// No file and no `[name]`.
    anonymous: bool,
}

fn parse_mapping(line: &str) -> Option<Mapping> {
    let mut fields = line.split_ascii_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let permissions = fields.next()?.to_string();
    let anonymous = fields.nth(3).is_none();
    Some(Mapping { range: usize::from_str_radix(start, 16).ok()?..usize::from_str_radix(end, 16).ok()?, permissions, anonymous })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_lies_between_the_kept_bottom_and_the_current_frame() {
        let entry = 0x7000_0004_0000 - 512;
        let stack_bytes = 256 * 1024;
        let range = release_range(entry, stack_bytes, entry - 100 * 1024).unwrap();
        assert_eq!(range.start % page_bytes(), 0);
        assert_eq!(range.end % page_bytes(), 0);
        assert!(range.start >= entry - stack_bytes + KEPT_AT_THE_BOTTOM_BYTES);
        assert!(range.end <= entry - 100 * 1024 - KEPT_BELOW_THE_STACK_POINTER_BYTES);
        assert!(
            range.end + page_bytes() > entry - 100 * 1024 - KEPT_BELOW_THE_STACK_POINTER_BYTES,
            "no whole page is kept below the margin"
        );
        assert!(release_range(entry, stack_bytes, entry - 220 * 1024).is_none(), "nothing left to release that deep");
        assert!(release_range(entry, stack_bytes, entry + 64).is_none(), "a frame above the entry is not this stack");
    }

    #[test]
    fn the_mappings_decide_whether_a_release_fits() {
        let page = page_bytes();
        let stack_bytes = 64 * page;
        let bottom = 0x4000_0000;
        let entry = bottom + stack_bytes - 100;
        let range = bottom + 9 * page..bottom + 40 * page;
        let stack_line = format!("{bottom:x}-{:x} rw-p 00000000 00:00 0", bottom + stack_bytes);
        let guard_line = format!("{:x}-{bottom:x} ---p 00000000 00:00 0", bottom - page);
        let guarded = format!("1000-2000 r-xp 00000000 08:01 7 /octopus\n{guard_line}\n{stack_line}\n");
        assert_eq!(check_range_in_mappings(&guarded, entry, stack_bytes, &range), StackCheck::Fits);

        let unguarded = format!("1000-2000 r-xp 00000000 08:01 7 /octopus\n{stack_line}\n");
        let StackCheck::Differs(problem) = check_range_in_mappings(&unguarded, entry, stack_bytes, &range) else { panic!() };
        assert!(problem.starts_with("the mapping below it is not an adjoining guard page"), "{problem}");
        let too_low = bottom..bottom + 40 * page;
        assert!(matches!(check_range_in_mappings(&guarded, entry, stack_bytes, &too_low), StackCheck::Differs(_)), "the sentinel page is kept");

        let elsewhere = format!("1000-2000 r-xp 00000000 08:01 7 /octopus\n{guard_line}\n");
        assert!(
            matches!(check_range_in_mappings(&elsewhere, entry, stack_bytes, &range), StackCheck::Differs(_)),
            "mappings that leave out the stack are a layout we do not know, not a missing /proc"
        );

        // qemu-user without the host's /proc lists nothing: not known yet, so asked again later.
        assert!(matches!(check_range_in_mappings("", entry, stack_bytes, &range), StackCheck::Unknown(_)));
    }

    #[test]
    fn maps_lines_are_read_with_their_permissions_and_kind() {
        let anonymous = parse_mapping("7f00aa000000-7f00aa040000 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!(anonymous, Mapping { range: 0x7f00_aa00_0000..0x7f00_aa04_0000, permissions: "rw-p".to_string(), anonymous: true });
        assert!(!parse_mapping("7ffc1000-7ffc2000 rw-p 00000000 00:00 0  [stack]").unwrap().anonymous);
        assert!(!parse_mapping("55d0-55e0 r-xp 00000000 08:01 1234 /usr/bin/octopus").unwrap().anonymous);
        assert_eq!(parse_mapping("garbage"), None);
    }

    #[test]
    fn a_coroutine_stack_is_found_and_released_and_the_coroutine_ends_normally() {
        // A coroutine with the gateway's stack size touches its stack deep, comes back up and
        // releases what lies below; the coroutine library's end-of-life check of its sentinel
        // must still pass (it would end the process otherwise), and the stack must still work.
        may::config().set_stack_size(crate::app::COROUTINE_STACK_WORDS);
        let (range, resident_before, resident_after, first_sum, second_sum) = may::go!(|| {
            let entry = StackEntry::here();
            assert!(entry.stack_bytes > 0);
            let first_sum = touch_stack_deeply(40);
            // What is resident where the release will go (it starts a few frames below here).
            let probe = release_range(entry.address, entry.stack_bytes, entry.address - page_bytes()).unwrap();
            let resident_before = resident_pages(&probe);
            let range = entry.release_deeper_pages().expect("the 80 KiB touched below are released");
            let resident_after = resident_pages(&range);
            (range, resident_before, resident_after, first_sum, touch_stack_deeply(40))
        })
        .join()
        .unwrap();
        assert_eq!(CHECKED.load(Ordering::Relaxed), SAFE, "the stack layout was recognised");
        assert!(range.end - range.start >= 64 * 1024, "{range:x?}");
        assert!(resident_before >= 16, "40 frames of 2 KiB touched at least 16 pages: {resident_before}");
        assert_eq!(resident_after, 0, "every released page left memory");
        assert_eq!(first_sum, second_sum, "the released pages work again");
    }

    #[test]
    fn a_connection_that_lasted_releases_its_stack_when_it_ends_and_a_short_one_keeps_it() {
        may::config().set_stack_size(crate::app::COROUTINE_STACK_WORDS);
        let (short, long, resident_after) = may::go!(|| {
            let entry = StackEntry::here();
            touch_stack_deeply(40);
            let short = entry.release_at_connection_end(Duration::from_millis(999));
            let long = entry.release_at_connection_end(CONNECTION_LONG_ENOUGH_TO_RELEASE_ITS_STACK);
            let resident_after = long.as_ref().map(resident_pages);
            (short, long, resident_after)
        })
        .join()
        .unwrap();
        assert_eq!(short, None, "a connection shorter than a second keeps its pages for the next one");
        let long = long.expect("a connection of a second or more releases its pages");
        assert!(long.end - long.start >= 64 * 1024, "the 80 KiB touched below the entry: {long:x?}");
        assert_eq!(resident_after, Some(0), "every released page left memory");
    }

    /// Pages of `range` in memory, asked of the kernel with `mincore`.
    fn resident_pages(range: &std::ops::Range<usize>) -> usize {
        let pages = (range.end - range.start) / page_bytes();
        let mut residency = vec![0u8; pages];
        // SAFETY: `range` is page-aligned and mapped (a coroutine stack); the vector has one
        // byte per page, as mincore requires.
        let result = unsafe { libc::mincore(range.start as *mut libc::c_void, range.end - range.start, residency.as_mut_ptr()) };
        assert_eq!(result, 0, "mincore: {}", std::io::Error::last_os_error());
        residency.iter().filter(|byte| **byte & 1 == 1).count()
    }

    /// Recursion with a 2 KiB frame each level; returns a sum so it is not optimised away.
    #[inline(never)]
    fn touch_stack_deeply(levels: u32) -> u64 {
        let mut frame = [0u8; 2048];
        frame[usize::try_from(levels).unwrap() % 2048] = levels as u8;
        let below = if levels == 0 { 0 } else { touch_stack_deeply(levels - 1) };
        std::hint::black_box(&frame);
        below + u64::from(frame[usize::try_from(levels).unwrap() % 2048])
    }
}
