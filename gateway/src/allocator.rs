//! The global allocator of both binaries: mimalloc, asked for plain
//! allocations wherever plain ones are aligned enough.
//!
//! The `mimalloc` crate's allocator passes every Rust allocation to
//! `mi_malloc_aligned`, whatever its alignment. mimalloc's aligned entry
//! point only takes its fast path for blocks of at most 1 KiB whose free
//! list happens to start aligned; anything larger goes through its generic
//! aligned path, which over-allocates (`size + align - 1`) unless the
//! block size is a power of two. A proxied request makes about 90
//! allocations (header maps, pingora's session, buffers), a fifth of them
//! above 1 KiB, and under callgrind the aligned entry point cost 6,800
//! instructions a request, 8% of the gateway's HTTP/1.1 work.
//!
//! `mi_malloc` returns blocks aligned to 16 bytes (to 8 for the 8-byte
//! size class), so a layout whose alignment is at most 16 and at most its
//! size needs nothing more; the C library's allocator is used by Rust's own
//! `System` allocator under the same rule. Larger alignments (tokio's
//! cache-padded task cells, for one) still go to the aligned entry points.

// Calls into mimalloc's C functions; nothing else here.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// What `mi_malloc` guarantees for every block of at least this size.
const PLAIN_ALIGN: usize = 16;

/// mimalloc, with plain allocations for ordinary alignments.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allocator;

/// Whether a block of `size` bytes from the plain entry points is aligned
/// to `align`.
#[inline]
fn plain_is_aligned(size: usize, align: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

// Safety: every block handed out comes from mimalloc, aligned as the
// layout asks (above), and is freed or resized only by mimalloc, whose
// `mi_free` and `mi_realloc*` accept blocks from any of its entry points.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // Safety: the layout's size is not zero (GlobalAlloc's contract).
        unsafe {
            if plain_is_aligned(layout.size(), layout.align()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // Safety: as in `alloc`.
        unsafe {
            if plain_is_aligned(layout.size(), layout.align()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // Safety: `ptr` came from this allocator, so from mimalloc.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Safety: `ptr` came from this allocator with `layout`, and
        // `new_size` is not zero (GlobalAlloc's contract).
        unsafe {
            if plain_is_aligned(new_size, layout.align()) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size class up to 64 KiB and every alignment up to 4 KiB comes
    /// back aligned, zeroed when asked, and keeps its bytes across growing
    /// and shrinking reallocations (which may move the block between the
    /// plain and the aligned entry points).
    #[test]
    fn blocks_are_aligned_and_keep_their_contents() {
        let a = Allocator;
        let mut sizes: Vec<usize> = (1..=64).collect();
        let mut s = 80;
        while s <= 65_536 {
            sizes.extend([s - 1, s, s + 1]);
            s = s * 5 / 4;
        }
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for &size in &sizes {
                let layout = Layout::from_size_align(size, align).expect("valid layout");
                // Safety: non-zero sizes; each block is freed once, with the
                // layout it was allocated (or reallocated) with.
                unsafe {
                    let z = a.alloc_zeroed(layout);
                    assert!(!z.is_null());
                    assert_eq!(z as usize % align, 0, "zeroed {size}/{align}");
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    a.dealloc(z, layout);

                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "alloc {size}/{align}");
                    for i in 0..size {
                        *p.add(i) = (i % 251) as u8;
                    }
                    let grown = size * 3 + 7;
                    let q = a.realloc(p, layout, grown);
                    assert_eq!(q as usize % align, 0, "grown {size}/{align}");
                    for i in 0..size {
                        assert_eq!(*q.add(i), (i % 251) as u8, "grown {size}/{align} byte {i}");
                    }
                    let grown_layout = Layout::from_size_align(grown, align).expect("valid");
                    let shrunk = size.div_ceil(2);
                    let r = a.realloc(q, grown_layout, shrunk);
                    assert_eq!(r as usize % align, 0, "shrunk {size}/{align}");
                    for i in 0..shrunk {
                        assert_eq!(*r.add(i), (i % 251) as u8, "shrunk {size}/{align} byte {i}");
                    }
                    a.dealloc(r, Layout::from_size_align(shrunk, align).expect("valid"));
                }
            }
        }
    }

    #[test]
    fn the_plain_path_is_taken_only_where_it_is_aligned_enough() {
        assert!(plain_is_aligned(1, 1));
        assert!(plain_is_aligned(8, 8));
        assert!(plain_is_aligned(1500, 8));
        assert!(plain_is_aligned(16, 16));
        assert!(!plain_is_aligned(4, 8));
        assert!(!plain_is_aligned(256, 32));
        assert!(!plain_is_aligned(8, 16));
    }
}
