//! The global allocator Wharf installs: mimalloc, plus the charging of
//! host allocations to instance accounts (see the module above).
//!
//! A charged allocation comes from a heap of its own in one exclusive
//! mimalloc arena, with a small header before it naming its account; so a
//! free tells a charged block from any other by its address alone (two
//! comparisons), and credits the right account from any thread. Nothing
//! else pays more than those two comparisons and a thread-local read.
//! (Hand-rolled because no allocator crate attributes memory to an owner
//! that outlives the thread or task that allocated it.)

#![allow(unsafe_code, reason = "a global allocator is unsafe by nature; each unsafe block says why it holds")]

use super::{LIVE, USED, charged};
use libmimalloc_sys as mi;
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;

/// Address space charged blocks come from (reserved without access;
/// mimalloc commits what it uses), in exclusive arenas of
/// [`PIECE_BYTES`] (mimalloc's arenas hold up to 16 GiB less their
/// metadata).
const ARENA_BYTES: usize = 64 << 30;
const PIECE_BYTES: usize = 8 << 30;
const PIECES: usize = ARENA_BYTES / PIECE_BYTES;

/// Bytes before each charged block: its [`Header`], padded to the
/// alignment every block has at least.
const HEADER_SPACE: usize = 16;

/// The alignment every mimalloc block of at least this size has
/// (`MI_MAX_ALIGN_SIZE`), as glibc's `malloc` does.
const MIN_ALIGN: usize = 16;

/// Whether plain `mi_malloc` of `size` bytes is aligned enough for
/// `align`. The `mimalloc` crate asks for every block through
/// `mi_malloc_aligned`, and mimalloc 3 serves that from its fast path only
/// for blocks under 1 KiB whose free block happens to be aligned: other
/// sizes go through over-allocation (19 blocks a hello request, 5,400
/// instructions, 4% of the request); `std`'s own `System` allocator makes
/// the same test before its plain `malloc`.
#[inline]
fn plain_is_aligned(size: usize, align: usize) -> bool {
    align <= MIN_ALIGN && align <= size
}

#[repr(C)]
struct Header {
    account: u32,
    /// Bytes between the start of the mimalloc block and the payload.
    offset: u32,
}

struct Arena {
    start: usize,
    end: usize,
    /// A heap for each piece, tried in order.
    heaps: [usize; PIECES],
}

static ARENA: OnceLock<Option<Arena>> = OnceLock::new();

/// mimalloc, with host allocations made during a guest's host calls
/// charged to the guest's instance. Install it as the global allocator
/// (`#[global_allocator]`) for host memory to be counted and bounded.
pub struct CountingAllocator;

/// Makes the arena, once; whether charging works in this process.
pub(super) fn enable() -> bool {
    ARENA.get_or_init(make_arena).is_some() && probe()
}

/// Whether the arena exists (charged allocations are possible).
pub(super) fn is_enabled() -> bool {
    matches!(ARENA.get(), Some(Some(_)))
}

fn make_arena() -> Option<Arena> {
    // SAFETY: a fresh anonymous mapping, never unmapped, handed to mimalloc
    // in pieces (it commits what it uses); plain FFI calls with valid
    // out-pointers.
    unsafe {
        let reserved = libc::mmap(
            std::ptr::null_mut(),
            ARENA_BYTES,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if reserved == libc::MAP_FAILED {
            tracing::warn!(
                "cannot reserve address space for host-memory accounts: host memory is not counted"
            );
            return None;
        }
        let start = reserved as usize;
        let mut heaps = [0usize; PIECES];
        for (index, heap) in heaps.iter_mut().enumerate() {
            let piece = (start + index * PIECE_BYTES) as *mut c_void;
            let mut id: mi::mi_arena_id_t = std::ptr::null_mut();
            if !mi::mi_manage_os_memory_ex(piece, PIECE_BYTES, false, false, true, -1, true, &mut id) {
                tracing::warn!(
                    "cannot hand address space to mimalloc for host-memory accounts: host memory is not counted"
                );
                return None;
            }
            *heap = mi::mi_heap_new_in_arena(id) as usize;
            if *heap == 0 {
                return None;
            }
        }
        Some(Arena { start, end: start + ARENA_BYTES, heaps })
    }
}

/// Whether this process's global allocator is the counting one: an
/// allocation charged to a scratch account must show up in it.
fn probe() -> bool {
    static COUNTING: OnceLock<bool> = OnceLock::new();
    *COUNTING.get_or_init(|| {
        let account = super::take_account();
        if account == super::NO_ACCOUNT {
            return false;
        }
        let saved = super::CHARGE.with(|c| c.replace((account, tokio::task::try_id())));
        let probe = std::hint::black_box(vec![0u8; 64]);
        super::CHARGE.with(|c| c.set(saved));
        let counted = USED[account as usize].load(Ordering::Relaxed) >= 64;
        drop(probe);
        super::FREE.lock().unwrap_or_else(|e| e.into_inner()).push(account);
        counted
    })
}

#[inline]
fn arena() -> Option<&'static Arena> {
    ARENA.get().and_then(Option::as_ref)
}

#[inline]
fn is_charged_block(ptr: *mut u8) -> bool {
    arena().is_some_and(|a| (ptr as usize) >= a.start && (ptr as usize) < a.end)
}

/// A block of `layout` charged to `account`, or `None` when the arena is
/// full (the caller then allocates uncharged).
unsafe fn alloc_charged(layout: Layout, account: u32, zeroed: bool) -> Option<*mut u8> {
    let arena = arena()?;
    let align = layout.align().max(HEADER_SPACE);
    let offset = align;
    let total = layout.size().checked_add(offset)?;
    // SAFETY: the heaps were made by mimalloc for the arena and are never
    // freed; `align` is a power of two.
    let block = arena.heaps.iter().find_map(|&heap| {
        let heap = heap as *mut mi::mi_heap_t;
        // `total` is at least 16: a plain block is 16-aligned.
        let block = unsafe {
            match (zeroed, align <= MIN_ALIGN) {
                (true, true) => mi::mi_heap_zalloc(heap, total),
                (false, true) => mi::mi_heap_malloc(heap, total),
                (true, false) => mi::mi_heap_zalloc_aligned(heap, total, align),
                (false, false) => mi::mi_heap_malloc_aligned(heap, total, align),
            }
        } as *mut u8;
        (!block.is_null()).then_some(block)
    })?;
    // SAFETY: `offset` >= 16 bytes lie before the payload inside the block,
    // and the payload is at least 16-aligned, so the header is aligned.
    unsafe {
        let payload = block.add(offset);
        (payload as *mut Header).sub(1).write(Header { account, offset: offset as u32 });
        USED[account as usize].fetch_add(layout.size(), Ordering::Relaxed);
        Some(payload)
    }
}

/// An ordinary mimalloc block of `layout`, zeroed if asked.
#[inline]
unsafe fn alloc_uncharged(layout: Layout, zeroed: bool) -> *mut u8 {
    if plain_is_aligned(layout.size(), layout.align()) {
        // SAFETY: a plain block of this size is aligned enough.
        let ptr = unsafe { if zeroed { mi::mi_zalloc(layout.size()) } else { mi::mi_malloc(layout.size()) } }
            as *mut u8;
        debug_assert!(
            (ptr as usize).is_multiple_of(layout.align()),
            "mimalloc's plain block is under-aligned"
        );
        ptr
    } else if zeroed {
        // SAFETY: forwarded unchanged.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    } else {
        // SAFETY: forwarded unchanged.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
}

/// Frees a charged block and credits its account.
unsafe fn free_charged(ptr: *mut u8, size: usize) {
    // SAFETY: `ptr` is a payload `alloc_charged` returned: its header is
    // just before it and the block starts `offset` bytes before it.
    unsafe {
        let header = (ptr as *const Header).sub(1).read();
        USED[header.account as usize].fetch_sub(size, Ordering::Relaxed);
        mi::mi_free(ptr.sub(header.offset as usize) as *mut c_void);
    }
}

fn account_of(ptr: *mut u8) -> u32 {
    // SAFETY: only called on charged blocks, which carry a header.
    unsafe { (ptr as *const Header).sub(1).read().account }
}

// SAFETY: every block is allocated and freed by mimalloc; charged blocks
// are told apart by address and freed from the start mimalloc gave.
unsafe impl GlobalAlloc for CountingAllocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Some(account) = charged()
            && let Some(ptr) = unsafe { alloc_charged(layout, account, false) }
        {
            return ptr;
        }
        // SAFETY: mimalloc's own entry points; the plain one only where its
        // blocks are aligned enough.
        unsafe { alloc_uncharged(layout, false) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if let Some(account) = charged()
            && let Some(ptr) = unsafe { alloc_charged(layout, account, true) }
        {
            return ptr;
        }
        // SAFETY: as in `alloc`.
        unsafe { alloc_uncharged(layout, true) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_charged_block(ptr) {
            // SAFETY: a charged block of `layout.size()` bytes.
            unsafe { free_charged(ptr, layout.size()) }
        } else {
            // SAFETY: forwarded unchanged.
            unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let charged_block = is_charged_block(ptr);
        // A charged block stays with its account while its instance lives;
        // a block grown during a host call joins the caller's account.
        let account = if charged_block {
            let account = account_of(ptr);
            LIVE[account as usize].load(Ordering::Acquire).then_some(account)
        } else {
            charged()
        };
        if !charged_block && account.is_none() {
            if plain_is_aligned(new_size, layout.align()) {
                // SAFETY: an uncharged mimalloc block, grown to a size whose
                // plain blocks are aligned enough.
                return unsafe { mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8 };
            }
            // SAFETY: forwarded unchanged.
            return unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        }
        // SAFETY: `new_size` with the old alignment is a valid layout (the
        // caller's contract); the copy covers the smaller of both sizes.
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let moved = match account.and_then(|a| alloc_charged(new_layout, a, false)) {
                Some(moved) => moved,
                None => alloc_uncharged(new_layout, false),
            };
            if moved.is_null() {
                return moved;
            }
            std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
            self.dealloc(ptr, layout);
            moved
        }
    }
}
