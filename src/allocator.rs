//! floodgate's global allocator: mimalloc for the many small blocks of request handling, the
//! system allocator for large ones, with the largest (the limit store's tables) on huge pages.
//!
//! **Small blocks (< 256 KiB) go to mimalloc.** A request allocates a handful of blocks and
//! frees them on the same worker thread; mimalloc serves that from per-thread free lists in a
//! few dozen instructions, where glibc's malloc falls out of its per-thread cache for blocks
//! over 1 KiB (read buffers, header tables) into its general path, several hundred
//! instructions a call and a large stretch of code through the instruction cache. Measured
//! with callgrind at 64 connections: 22.3k → 21.4k instructions per proxied request; in one
//! 3-round `compare.sh` run, 1.06× nginx_lr's requests/s where the same code on glibc did 1.01×
//! (docs/performance.md).
//!
//! **Large blocks stay with the system allocator**, which hands blocks this size back to the
//! kernel when they are freed; the limit store's tables grow by doubling, and mimalloc would
//! keep the outgrown ones (`cargo bench --bench memory`, bytes per tracked key at 1M keys:
//! glibc alone 151.6, mimalloc alone 169.9, this split 155.3).
//!
//! **Blocks of 2 MiB or more sit on transparent huge pages.** At a million tracked accounts the
//! limit table is about 140 MB, and a decision is two dependent random reads into it (the hash
//! control bytes, then the entry). With 4 KiB pages each of those reads also misses the TLB
//! and walks the page tables, which costs about as much again. Linux commonly leaves
//! transparent huge pages to `madvise` (the `/sys/kernel/mm/transparent_hugepage/enabled`
//! default on many distributions), so such blocks are aligned to whole huge pages and advised
//! to use them. Measured with `cargo bench --bench decision -- 1M_keys`: 457 ns per decision at
//! 1M keys with small pages, 314 ns with this.

use std::alloc::{GlobalAlloc, Layout, System};

use mimalloc::MiMalloc;

/// Blocks below this size are mimalloc's.
const SMALL_LIMIT: usize = 256 << 10;
/// The huge page size on x86-64 and the usual arm64 configuration.
const HUGE_PAGE: usize = 2 << 20;

/// Small blocks to mimalloc, large ones to the system allocator, the largest on huge pages.
pub struct Allocator;

/// The layout a large block is really allocated with: whole, aligned huge pages from
/// `HUGE_PAGE` up, so all of a large table — its start and its end too — is on huge pages.
fn placed(layout: Layout) -> Layout {
    if layout.size() < HUGE_PAGE {
        return layout;
    }
    Layout::from_size_align(
        layout.size().next_multiple_of(HUGE_PAGE),
        layout.align().max(HUGE_PAGE),
    )
    .unwrap_or(layout)
}

/// A large block from the system allocator by `get` (plain or zeroed), placed and advised onto
/// huge pages from `HUGE_PAGE` up.
///
/// # Safety
/// As `GlobalAlloc::alloc`: `layout` has a non-zero size.
unsafe fn large(layout: Layout, get: unsafe fn(&System, Layout) -> *mut u8) -> *mut u8 {
    let placed = placed(layout);
    let p = unsafe { get(&System, placed) };
    if placed != layout {
        advise(p, placed.size());
    }
    p
}

fn is_small(size: usize) -> bool {
    size < SMALL_LIMIT
}

// SAFETY: a block's home is a pure function of its size: small blocks come from and go back
// to mimalloc with the caller's layout; large ones come from `System` with the layout `placed`
// derives from the caller's and go back with the same derived layout (`placed` is pure too);
// `realloc` hands a resize to the block's home only when the new size has the same home and
// layout rule (no huge pages either side); any other resize moves the block.
// `advise` only gives the kernel advice about memory a block owns.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        #[cfg(feature = "test-hooks")]
        counting::note();
        if is_small(layout.size()) {
            return unsafe { MiMalloc.alloc(layout) };
        }
        unsafe { large(layout, <System as GlobalAlloc>::alloc) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        #[cfg(feature = "test-hooks")]
        counting::note();
        if is_small(layout.size()) {
            return unsafe { MiMalloc.alloc_zeroed(layout) };
        }
        unsafe { large(layout, <System as GlobalAlloc>::alloc_zeroed) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_small(layout.size()) {
            return unsafe { MiMalloc.dealloc(ptr, layout) };
        }
        unsafe { System.dealloc(ptr, placed(layout)) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        #[cfg(feature = "test-hooks")]
        counting::note();
        if is_small(layout.size()) && is_small(new_size) {
            return unsafe { MiMalloc.realloc(ptr, layout, new_size) };
        }
        let system = |size| !is_small(size) && size < HUGE_PAGE;
        if system(layout.size()) && system(new_size) {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // Across homes, or to or from a huge-page block: move it.
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}
/// Test builds only (`--features test-hooks`): allocations counted on the threads that ask
/// for it (floodgate's workers), so a test can check a request path allocates nothing.
#[cfg(feature = "test-hooks")]
pub mod counting {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicU64, Ordering};

    thread_local! {
        static COUNTED: Cell<bool> = const { Cell::new(false) };
    }
    static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

    /// Counts this thread's allocations (and reallocations) from now on.
    pub fn count_this_thread() {
        COUNTED.set(true);
    }

    /// Allocations counted so far, on every counted thread.
    pub fn allocations() -> u64 {
        ALLOCATIONS.load(Ordering::Relaxed)
    }

    pub(super) fn note() {
        if COUNTED.try_with(Cell::get).unwrap_or(false) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Asks for huge pages over a block that starts and ends on huge-page boundaries. Advice
/// only: when the kernel declines, the memory keeps its small pages.
fn advise(p: *mut u8, size: usize) {
    if p.is_null() {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: the range is exactly one live block; MADV_HUGEPAGE changes how it is backed,
    // never its contents.
    unsafe {
        libc::madvise(p.cast(), size, libc::MADV_HUGEPAGE);
    }
}
