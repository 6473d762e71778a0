//! A global allocator that keeps large freed blocks for reuse, so that a steady-state
//! denoising step takes no fresh memory from the operating system.
//!
//! Every op's output is a new buffer, and glibc maps buffers larger than its mmap threshold
//! (32 MB at most) on allocation and unmaps them on free: each then pays a page fault and a
//! kernel page clear per 4 KB (measured as 1-2% of an SD 1.5 UNet step and 13% of a VAE
//! decode at 512² on the project's machine). [`Workspace`] serves blocks of [`LARGE`] bytes
//! or more itself:
//! - a freed block goes into a small cache; a request of the same size in whole pages takes
//!   it back (zeroed again only when the caller asks for zeroed memory);
//! - a request that the cache cannot serve maps a new block, but when that would map more
//!   bytes than were ever mapped at once, cached blocks go back to the system first (oldest
//!   first). The peak is then only ever raised by blocks in use: the cache never adds to the
//!   peak resident set.
//!
//! So the denoising steps, which run below the peak that loading the weights set, reuse
//! their blocks; a phase that sets a new peak (the VAE decode of a large image, whose
//! activations outgrow the UNet's) maps as glibc would.
//!
//! Smaller requests go straight to the system allocator. Install it in a binary with
//! `#[global_allocator] static ALLOC: Workspace = Workspace::new();`; [`Workspace::trim`]
//! returns the cache (a server between requests). Advising the blocks for transparent huge
//! pages was measured too and made no difference.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;

/// Blocks at least this large are kept for reuse; smaller ones go to the system allocator.
pub const LARGE: usize = 4 << 20;
/// Large blocks are sized and aligned in whole pages.
pub const PAGE: usize = 4096;
/// The most freed blocks the cache holds.
const SLOTS: usize = 64;

/// A freed large block: its address and its rounded size.
#[derive(Clone, Copy)]
struct Block {
    addr: usize,
    size: usize,
}

/// The cache of freed large blocks, oldest first (a fixed array: the allocator must not
/// allocate while it holds the lock).
struct Cache {
    blocks: [Block; SLOTS],
    len: usize,
    /// Bytes in the cached blocks.
    bytes: usize,
    /// Bytes mapped now: blocks in use and cached ones.
    mapped: usize,
    /// The most bytes ever mapped at once.
    peak: usize,
}

impl Cache {
    const fn new() -> Self {
        Self {
            blocks: [Block { addr: 0, size: 0 }; SLOTS],
            len: 0,
            bytes: 0,
            mapped: 0,
            peak: 0,
        }
    }

    /// Takes the most recently freed block of exactly `size` bytes.
    fn take(&mut self, size: usize) -> Option<Block> {
        let at = (0..self.len).rev().find(|&i| self.blocks[i].size == size)?;
        Some(self.remove(at))
    }

    /// Removes block `at`, keeping the others in age order.
    fn remove(&mut self, at: usize) -> Block {
        let block = self.blocks[at];
        self.blocks.copy_within(at + 1..self.len, at);
        self.len -= 1;
        self.bytes -= block.size;
        block
    }

    /// Adds a freed block (the oldest goes back to the system when the cache is full).
    fn put(&mut self, block: Block) {
        if self.len == SLOTS {
            self.release_oldest();
        }
        self.blocks[self.len] = block;
        self.len += 1;
        self.bytes += block.size;
    }

    /// Returns the oldest cached block to the system (the cache is not empty).
    fn release_oldest(&mut self) {
        let block = self.remove(0);
        self.mapped -= block.size;
        // SAFETY: cached blocks came from `os::map` with that size and are not in use.
        unsafe { os::unmap(block.addr as *mut u8, block.size) };
    }
}

/// The global allocator described in the module documentation.
pub struct Workspace {
    cache: Mutex<Cache>,
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

impl Workspace {
    /// An empty workspace.
    pub const fn new() -> Self {
        Self {
            cache: Mutex::new(Cache::new()),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic never happens while the lock is held; recover rather than abort if it did.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes held in freed blocks, ready for reuse.
    pub fn cached_bytes(&self) -> usize {
        self.cache().bytes
    }

    /// Returns every cached block to the system.
    pub fn trim(&self) {
        let mut cache = self.cache();
        while cache.len > 0 {
            cache.release_oldest();
        }
    }

    /// A block for `layout` and whether its memory is known to be zero, or null.
    ///
    /// # Safety
    /// `layout` is large (see [`is_large`]).
    unsafe fn alloc_large(&self, layout: Layout) -> (*mut u8, bool) {
        let size = rounded(layout.size());
        let mut cache = self.cache();
        if let Some(block) = cache.take(size) {
            return (block.addr as *mut u8, false);
        }
        // A miss: if mapping another block would take more than has ever been mapped, give
        // cached blocks back first (oldest first), so the peak is only ever raised by live
        // blocks.
        while cache.mapped + size > cache.peak && cache.len > 0 {
            cache.release_oldest();
        }
        // SAFETY: `size` is a non-zero multiple of the page size.
        let mut ptr = unsafe { os::map(size) };
        if ptr.is_null() && cache.len > 0 {
            // Out of memory: whatever is cached goes back, then one more try.
            while cache.len > 0 {
                cache.release_oldest();
            }
            // SAFETY: as above.
            ptr = unsafe { os::map(size) };
        }
        if !ptr.is_null() {
            cache.mapped += size;
            cache.peak = cache.peak.max(cache.mapped);
        }
        (ptr, os::ZEROED)
    }
}

/// Whether a request is served by the workspace (large, and aligned no more than a page).
fn is_large(layout: Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= PAGE
}

/// `size` rounded up to whole pages.
fn rounded(size: usize) -> usize {
    size.div_ceil(PAGE) * PAGE
}

// SAFETY: large blocks are page-aligned (at least the layout's alignment, checked by
// `is_large`) and at least the layout's size; a block is handed out at most once until freed;
// the rest is the system allocator's.
unsafe impl GlobalAlloc for Workspace {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !is_large(layout) {
            // SAFETY: the caller's contract, passed on.
            return unsafe { System.alloc(layout) };
        }
        // SAFETY: large.
        unsafe { self.alloc_large(layout).0 }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !is_large(layout) {
            // SAFETY: the caller's contract, passed on.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // SAFETY: large.
        let (ptr, zeroed) = unsafe { self.alloc_large(layout) };
        if !ptr.is_null() && !zeroed {
            // SAFETY: the block holds at least `layout.size()` bytes.
            unsafe { ptr.write_bytes(0, layout.size()) };
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !is_large(layout) {
            // SAFETY: the caller's contract: it came from `System` with this layout.
            return unsafe { System.dealloc(ptr, layout) };
        }
        let block = Block {
            addr: ptr as usize,
            size: rounded(layout.size()),
        };
        self.cache().put(block);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees a valid layout for `new_size`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (is_large(layout), is_large(new_layout)) {
            // SAFETY: the caller's contract, passed on.
            (false, false) => unsafe { System.realloc(ptr, layout, new_size) },
            (true, true) if rounded(layout.size()) == rounded(new_size) => ptr,
            _ => {
                // SAFETY: `new_layout` is valid (the caller's contract).
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
                    // SAFETY: both blocks hold at least the smaller size; they are distinct.
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                new
            }
        }
    }
}

/// Where large blocks come from: anonymous mappings on Linux, the
/// system allocator elsewhere.
#[cfg(target_os = "linux")]
mod os {
    /// Fresh mappings read as zero.
    pub(super) const ZEROED: bool = true;

    /// Maps `size` fresh bytes (page-aligned); null on failure.
    ///
    /// # Safety
    /// `size` is a non-zero multiple of the page size.
    pub(super) unsafe fn map(size: usize) -> *mut u8 {
        // SAFETY: an anonymous private mapping of fresh pages; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            ptr as *mut u8
        }
    }

    /// Unmaps a block from [`map`].
    ///
    /// # Safety
    /// `ptr` and `size` are a block from `map`, no longer in use.
    pub(super) unsafe fn unmap(ptr: *mut u8, size: usize) {
        // SAFETY: the caller's contract.
        unsafe { libc::munmap(ptr as *mut libc::c_void, size) };
    }
}

#[cfg(not(target_os = "linux"))]
mod os {
    use std::alloc::{GlobalAlloc, Layout, System};

    use super::PAGE;

    /// The system allocator does not promise zeroed memory from `alloc`.
    pub(super) const ZEROED: bool = false;

    /// A page-aligned block of `size` bytes from the system allocator; null on failure.
    ///
    /// # Safety
    /// `size` is a non-zero multiple of the page size.
    pub(super) unsafe fn map(size: usize) -> *mut u8 {
        // SAFETY: a non-zero size and a power-of-two alignment.
        unsafe { System.alloc(Layout::from_size_align_unchecked(size, PAGE)) }
    }

    /// Frees a block from [`map`].
    ///
    /// # Safety
    /// `ptr` and `size` are a block from `map`, no longer in use.
    pub(super) unsafe fn unmap(ptr: *mut u8, size: usize) {
        // SAFETY: the caller's contract.
        unsafe { System.dealloc(ptr, Layout::from_size_align_unchecked(size, PAGE)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 64).unwrap()
    }

    #[test]
    fn a_freed_large_block_is_reused_for_the_same_rounded_size() {
        let ws = Workspace::new();
        unsafe {
            let a = ws.alloc(layout(LARGE + 100));
            assert!(!a.is_null());
            assert_eq!(a as usize % PAGE, 0, "large blocks are page-aligned");
            a.write_bytes(7, LARGE + 100);
            ws.dealloc(a, layout(LARGE + 100));
            assert_eq!(ws.cached_bytes(), rounded(LARGE + 100));
            // Another size within the same pages takes the same block back.
            let b = ws.alloc(layout(LARGE + 2000));
            assert_eq!(a, b);
            assert_eq!(ws.cached_bytes(), 0);
            ws.dealloc(b, layout(LARGE + 2000));
        }
        ws.trim();
        assert_eq!(ws.cached_bytes(), 0);
    }

    #[test]
    fn zeroed_requests_get_zeros_from_a_reused_block() {
        let ws = Workspace::new();
        let size = LARGE * 2;
        unsafe {
            let a = ws.alloc(layout(size));
            a.write_bytes(0xab, size);
            ws.dealloc(a, layout(size));
            let b = ws.alloc_zeroed(layout(size));
            assert_eq!(a, b);
            let bytes = std::slice::from_raw_parts(b, size);
            assert!(bytes.iter().all(|&v| v == 0));
            ws.dealloc(b, layout(size));
        }
        ws.trim();
    }

    #[test]
    fn a_miss_that_would_raise_the_peak_returns_cached_blocks_first() {
        let ws = Workspace::new();
        let (small, big) = (LARGE, LARGE * 3);
        unsafe {
            let blocks: Vec<_> = (0..4).map(|_| ws.alloc(layout(small))).collect();
            for &b in &blocks {
                ws.dealloc(b, layout(small));
            }
            assert_eq!(ws.cached_bytes(), 4 * small);
            // 12 MiB more would map 28 MiB, over the 16 MiB peak: three cached 4 MiB blocks
            // go back to the system and the fourth stays.
            let c = ws.alloc(layout(big));
            assert!(!c.is_null());
            assert_eq!(ws.cached_bytes(), small);
            c.write_bytes(1, big);
            ws.dealloc(c, layout(big));
            assert_eq!(ws.cached_bytes(), small + big);
        }
        ws.trim();
        assert_eq!(ws.cached_bytes(), 0);
    }

    #[test]
    fn a_miss_below_the_peak_keeps_the_cache() {
        let ws = Workspace::new();
        let (one, two) = (LARGE, 2 * LARGE);
        unsafe {
            let a = ws.alloc(layout(two));
            let b = ws.alloc(layout(two));
            ws.dealloc(a, layout(two));
            ws.dealloc(b, layout(two));
            // Peak 4 units, all cached. One unit more would make 5: `a` goes back.
            let c = ws.alloc(layout(one));
            assert_eq!(ws.cached_bytes(), two);
            // Another unit fits under the peak (3 + 1): nothing goes back.
            let d = ws.alloc(layout(one));
            assert_eq!(ws.cached_bytes(), two);
            // And `b` serves the next request of its size.
            let e = ws.alloc(layout(two));
            assert_eq!(e, b);
            assert_eq!(ws.cached_bytes(), 0);
            for (p, size) in [(c, one), (d, one), (e, two)] {
                ws.dealloc(p, layout(size));
            }
        }
        ws.trim();
    }

    #[test]
    fn the_cache_holds_a_bounded_number_of_blocks() {
        let ws = Workspace::new();
        unsafe {
            let blocks: Vec<_> = (0..SLOTS + 3).map(|_| ws.alloc(layout(LARGE))).collect();
            for &b in &blocks {
                ws.dealloc(b, layout(LARGE));
            }
        }
        assert_eq!(ws.cached_bytes(), SLOTS * LARGE);
        ws.trim();
    }

    #[test]
    fn small_and_over_aligned_requests_go_to_the_system() {
        let ws = Workspace::new();
        unsafe {
            let a = ws.alloc(layout(1000));
            ws.dealloc(a, layout(1000));
            let wide = Layout::from_size_align(LARGE, PAGE * 2).unwrap();
            let b = ws.alloc(wide);
            assert_eq!(b as usize % (PAGE * 2), 0);
            ws.dealloc(b, wide);
        }
        assert_eq!(ws.cached_bytes(), 0);
    }

    #[test]
    fn realloc_keeps_the_contents_across_the_threshold() {
        let ws = Workspace::new();
        unsafe {
            let a = ws.alloc(layout(1024));
            for i in 0..1024 {
                *a.add(i) = i as u8;
            }
            let b = ws.realloc(a, layout(1024), LARGE + 1);
            assert!((0..1024).all(|i| *b.add(i) == i as u8));
            // Within the same pages the block stays where it is.
            let c = ws.realloc(b, layout(LARGE + 1), LARGE + 5);
            assert_eq!(b, c);
            let d = ws.realloc(c, layout(LARGE + 5), 512);
            assert!((0..512).all(|i| *d.add(i) == i as u8));
            ws.dealloc(d, layout(512));
        }
        ws.trim();
    }
}
