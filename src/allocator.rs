//! The global allocator (mimalloc, installed in `main.rs`): how Rust's requests reach it, and the
//! settings that keep an idle gateway small.
//!
//! mimalloc's Rust wrapper passes every request to `mi_malloc_aligned`, whatever the alignment.
//! Its fast path serves only blocks of 1 KiB or less, and a larger request whose size class is
//! not a power of two is over-allocated by the alignment and aligned by hand. Nearly every Rust
//! allocation asks for an alignment of 8 or less (16 at most), which every mimalloc block has:
//! blocks are whole words, pages start 16-byte aligned, and mimalloc asserts that every block of
//! 16 bytes or more is 16-byte aligned (`alloc.c`). Such requests go to `mi_malloc`, as Rust's
//! own system allocator sends them to `malloc`; the aligned functions serve the rest. Sending all
//! of them to `mi_malloc_aligned` cost 2.1% of a pass-through request's instructions and 1.8 to
//! 2.6% of a converted one's (callgrind, `scripts/bench --instructions`).
//!
//! mimalloc keeps freed memory for a while before giving it back to the OS (1 s by default, and
//! only when the thread that freed it allocates again), and commits its arenas eagerly. A
//! gateway is idle most of the time, and its largest allocation is transient: the argon2 hash of
//! an admin password (19 MiB) at login. Measured on a fresh data dir after the first start
//! (`VmRSS` one second after the first `/healthz`): 36.7 MiB with mimalloc's defaults, 12.2 MiB
//! with the two settings below, 10.7 MiB with glibc's malloc. Under load freed pages are reused
//! by the next requests before any purge, so the settings cost no measurable CPU.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;
use std::os::raw::c_int;

use libmimalloc_sys::{mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc, mi_zalloc_aligned};

/// mimalloc as Rust's global allocator, calling its plain functions where their alignment
/// suffices.
pub struct Mimalloc;

/// Whether a block from mimalloc's plain `mi_malloc(size)` is aligned to `align`: every block is
/// aligned to 8 bytes, and every block of 16 bytes or more to 16.
fn plain_block_is_aligned(size: usize, align: usize) -> bool {
    align <= 8 || (align <= 16 && size >= 16)
}

/// A block for `layout` from mimalloc's `plain` function when its alignment suffices, else from
/// its `aligned` one (the plain and aligned forms of malloc, or of zalloc).
#[inline]
fn allocate(
    layout: Layout,
    plain: unsafe extern "C" fn(usize) -> *mut c_void,
    aligned: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    // SAFETY: mimalloc's allocation functions take any size and a power-of-two alignment.
    unsafe {
        if plain_block_is_aligned(layout.size(), layout.align()) {
            plain(layout.size()).cast()
        } else {
            aligned(layout.size(), layout.align()).cast()
        }
    }
}

// SAFETY: every function returns memory from mimalloc that is at least `layout.size()` bytes and
// aligned to `layout.align()` (by the alignment of plain blocks above, or by the aligned function),
// or null; `dealloc` and `realloc` receive only pointers that mimalloc returned, which `mi_free`
// and the realloc functions accept whichever function made them.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        allocate(layout, mi_malloc, mi_malloc_aligned)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        allocate(layout, mi_zalloc, mi_zalloc_aligned)
    }

    #[inline]
    unsafe fn dealloc(&self, pointer: *mut u8, _layout: Layout) {
        // SAFETY: `pointer` came from mimalloc (the caller's contract) and is freed once.
        unsafe { mi_free(pointer.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `pointer` came from mimalloc; the new block keeps the old alignment.
        unsafe {
            if plain_block_is_aligned(new_size, layout.align()) {
                mi_realloc(pointer.cast::<c_void>(), new_size).cast()
            } else {
                mi_realloc_aligned(pointer.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

/// `mi_option_arena_eager_commit` in mimalloc 3's `mi_option_t` (the crate's own constants
/// follow mimalloc 2's numbering).
const ARENA_EAGER_COMMIT: c_int = 4;
/// `mi_option_purge_delay` in mimalloc 3's `mi_option_t`.
const PURGE_DELAY: c_int = 15;

/// Gives freed memory back at once and commits arena memory only as it is used. Called by
/// `main.rs` when the process is loaded, before the first allocation.
pub fn return_freed_memory_promptly() {
    // SAFETY: mi_option_set only stores an integer in mimalloc's option table; any value is
    // accepted for these two options.
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
    }
}

/// Gives back the memory this thread's heap holds free. Pages emptied by frees wait in the heap
/// of the thread that freed them and are purged only when that thread allocates again, which a
/// worker whose connections have all gone quiet does not. Called when a connection goes idle.
///
/// Measured with 100 keep-alive clients after five rounds of 150 KiB requests, their
/// connections idle for 5 s and then closed (anonymous memory 30 s later, against 2.1 MiB
/// before the requests): without this, 8.6 to 13.9 MiB stayed over four runs; with it, 6.1 to
/// 6.5 MiB in five runs of seven and 10.0 in two. A call that finds little to give back takes
/// about a microsecond; the one that gave back the requests' pages took 0.57 ms.
pub fn collect_this_threads_free_memory() {
    // SAFETY: mi_collect works on the calling thread's own heap (and segments other threads
    // abandoned); it takes no pointers. Forced, it also returns the pages a plain collection
    // keeps for the thread's next allocations.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::raw::c_long;

    fn option(option: c_int) -> c_long {
        // SAFETY: reading an option has no preconditions.
        unsafe { libmimalloc_sys::mi_option_get(option) }
    }

    /// The rule `plain_block_is_aligned` relies on, checked against mimalloc itself: plain
    /// blocks of every size up to 64 KiB, from fresh and reused pages, many of each size.
    #[test]
    fn plain_blocks_have_the_alignment_the_rule_promises() {
        let mut held = Vec::new();
        for round in 0..2 {
            for size in (1..=4096).chain((4097..=65536).step_by(509)) {
                for _ in 0..3 {
                    // SAFETY: a plain allocation, freed below.
                    let pointer = unsafe { mi_malloc(size) };
                    assert!(!pointer.is_null());
                    let address = pointer as usize;
                    assert_eq!(address % 8, 0, "size {size}, round {round}");
                    if size >= 16 {
                        assert_eq!(address % 16, 0, "size {size}, round {round}");
                    }
                    held.push(pointer);
                }
            }
            for pointer in held.drain(..) {
                // SAFETY: allocated above by mi_malloc and freed once.
                unsafe { mi_free(pointer) };
            }
        }
    }

    /// Every alignment Rust may ask for gets it, through either path, for allocation, zeroed
    /// allocation and reallocation that grows and shrinks.
    #[test]
    fn every_request_gets_its_alignment_and_zeroes() {
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1, 7, 8, 12, 15, 16, 24, 48, 100, 1000, 1025, 3000, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero sizes; every pointer is checked, used within its size and
                // freed once with its current layout.
                unsafe {
                    let pointer = Mimalloc.alloc(layout);
                    assert!(!pointer.is_null() && (pointer as usize).is_multiple_of(align), "alloc {size} / {align}");
                    pointer.write_bytes(0xAB, size);
                    let grown = Mimalloc.realloc(pointer, layout, size * 3);
                    assert!(!grown.is_null() && (grown as usize).is_multiple_of(align), "grow {size} / {align}");
                    assert!((0..size).all(|index| *grown.add(index) == 0xAB), "grow kept the bytes");
                    let shrunk = Mimalloc.realloc(grown, Layout::from_size_align(size * 3, align).unwrap(), size.div_ceil(2));
                    assert!(!shrunk.is_null() && (shrunk as usize).is_multiple_of(align), "shrink {size} / {align}");
                    assert!((0..size.div_ceil(2)).all(|index| *shrunk.add(index) == 0xAB), "shrink kept the bytes");
                    Mimalloc.dealloc(shrunk, Layout::from_size_align(size.div_ceil(2), align).unwrap());
                    let zeroed = Mimalloc.alloc_zeroed(layout);
                    assert!(!zeroed.is_null() && (zeroed as usize).is_multiple_of(align), "zeroed {size} / {align}");
                    assert!((0..size).all(|index| *zeroed.add(index) == 0), "zeroed {size} / {align}");
                    Mimalloc.dealloc(zeroed, layout);
                }
            }
        }
    }

    #[test]
    fn the_option_numbers_are_mimalloc_3s() {
        // Read before anything in this test binary sets them: mimalloc 3's defaults (1000 ms
        // purge delay; eager arena commit 2, "on overcommitting systems"). A wrong number would
        // read another option's default.
        assert_eq!((option(PURGE_DELAY), option(ARENA_EAGER_COMMIT)), (1000, 2));
        return_freed_memory_promptly();
        assert_eq!((option(PURGE_DELAY), option(ARENA_EAGER_COMMIT)), (0, 0));
    }
}
