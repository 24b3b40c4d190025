//! The process's global allocator: mimalloc, called through its plain entry points whenever
//! they already give the alignment a layout asks for.
//!
//! The `mimalloc` crate's `GlobalAlloc` passes every request to `mi_malloc_aligned`. That entry
//! point only has a fast path while the size class's current page has a free block at hand;
//! otherwise (a page whose free list is empty, the normal state after a burst of frees, and every
//! block above 1 KiB) it takes the generic aligned path, which over-allocates by `align - 1`
//! bytes and marks the page as holding interior pointers (slower frees from then on). Yet
//! mimalloc already places every block it hands out on a 16-byte boundary on 64-bit targets
//! (size classes above one word are multiples of two words, pages start 16-aligned), so for the
//! layouts a Rust program makes almost exclusively — alignment up to 16, no larger than the
//! size — `mi_malloc` gives the same guarantee at the cost of its own fast path. Larger or
//! unusual alignments still go to the aligned entry points. Measured in docs/performance.md.

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;
use libmimalloc_sys as mi;

/// The largest alignment that mimalloc's plain `mi_malloc` guarantees for a block of at least
/// that size: two words on 64-bit targets; one word (the size-class granularity everywhere)
/// elsewhere, to stay on the side of what is certain.
#[cfg(target_pointer_width = "64")]
const PLAIN_ALIGN: usize = 16;
#[cfg(not(target_pointer_width = "64"))]
const PLAIN_ALIGN: usize = core::mem::size_of::<usize>();

/// mimalloc as the global allocator (see the module comment for what differs from the
/// `mimalloc` crate's).
pub struct Allocator;

#[inline(always)]
fn plain(align: usize, size: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

// SAFETY: every pointer handed out comes from mimalloc and meets the layout's alignment: the
// plain entry points only for layouts `plain` admits (see PLAIN_ALIGN), the aligned ones for
// the rest; `mi_free` and `mi_realloc*` take any pointer mimalloc returned, aligned or not.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            mi::mi_malloc(layout.size()) as *mut u8
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            mi::mi_zalloc(layout.size()) as *mut u8
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr as *mut c_void);
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align(), new_size) {
            mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8
        } else {
            mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALIGNS: [usize; 8] = [1, 2, 4, 8, 16, 32, 64, 4096];

    /// Every size up to 1100 bytes, every 24th up to 5 KiB and a few large ones, each alignment, many blocks alive at once
    /// (so pages fill, empty and refill): each block is aligned as asked, writable over its
    /// whole size and not shared with another.
    #[test]
    fn blocks_meet_their_layouts_alignment_through_alloc_zeroed_and_realloc() {
        let sizes =
            (1..=1100)
                .chain((1100..=5 * 1024).step_by(24))
                .chain([64 * 1024, 300 * 1024, 4 << 20]);
        for size in sizes {
            for align in ALIGNS {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                let layout = layout.pad_to_align();
                let mut live = Vec::new();
                for round in 0..3u8 {
                    // SAFETY: layout has a non-zero size; each block is freed below with it.
                    unsafe {
                        let p = if round == 1 {
                            Allocator.alloc_zeroed(layout)
                        } else {
                            Allocator.alloc(layout)
                        };
                        assert!(!p.is_null(), "{layout:?}");
                        assert_eq!(p as usize % align, 0, "{layout:?} round {round}");
                        if round == 1 {
                            let bytes = core::slice::from_raw_parts(p, layout.size());
                            assert!(bytes.iter().all(|b| *b == 0), "{layout:?} zeroed");
                        }
                        p.write_bytes(round + 1, layout.size());
                        live.push((p, round + 1));
                    }
                }
                for (p, fill) in &live {
                    // SAFETY: p holds layout.size() bytes written above.
                    let bytes = unsafe { core::slice::from_raw_parts(*p, layout.size()) };
                    assert!(bytes.iter().all(|b| b == fill), "{layout:?} overlapped");
                }
                for (p, _) in live {
                    // SAFETY: p came from Allocator with this layout.
                    unsafe { Allocator.dealloc(p, layout) };
                }
            }
        }
    }

    /// Growing and shrinking keep the contents and the alignment, across the plain and the
    /// aligned paths (a block smaller than its alignment takes the aligned one).
    #[test]
    fn realloc_keeps_contents_and_alignment() {
        for align in ALIGNS {
            let layout = Layout::from_size_align(align, align).unwrap();
            // SAFETY: each pointer is used within the size it was last given and freed with the
            // layout of its last size.
            unsafe {
                let mut p = Allocator.alloc(layout);
                let mut size = layout.size();
                for i in 0..size {
                    *p.add(i) = i as u8;
                }
                for new_size in [3 * align, 2, 9000, align, 70_000, 1] {
                    let kept = size.min(new_size);
                    p = Allocator.realloc(
                        p,
                        Layout::from_size_align(size, align).unwrap(),
                        new_size,
                    );
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "align {align} size {new_size}");
                    for i in 0..kept {
                        assert_eq!(*p.add(i), i as u8, "align {align} size {new_size} byte {i}");
                    }
                    for i in kept..new_size {
                        *p.add(i) = i as u8;
                    }
                    size = new_size;
                }
                Allocator.dealloc(p, Layout::from_size_align(size, align).unwrap());
            }
        }
    }
}
