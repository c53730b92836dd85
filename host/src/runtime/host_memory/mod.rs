//! Host memory a guest makes the host hold, counted per instance and
//! bounded. A guest's linear memory is bounded by the resource limiter;
//! this bounds what it makes the *host* allocate on its behalf: header and
//! trailer bytes, buffered body bytes, resources of every kind, whatever a
//! host function allocates while the guest calls it.
//!
//! How: every allocation a host function makes while a guest is calling it
//! (between wasmtime's `CallingHost` and `ReturningFromHost` hooks, on the
//! guest's own task) is charged to the calling instance's account
//! ([`allocator`], the global allocator Wharf installs), and freeing it
//! credits that account again, wherever and whenever it is freed (a body
//! chunk freed by the connection that sent it, a header map dropped with
//! the store). When a host call returns with the account over its limit,
//! the instance traps with [`HostMemoryExceeded`]: the call that took it
//! over is the last one (a host call copies at most what the guest's own
//! memory holds, so the peak is the limit plus one such copy).
//!
//! What is not charged: memory the instance's instantiation needs (fixed
//! per component), and, in a reused instance, what an asynchronous host
//! call allocates after it first waited (its task is wasmtime's, not ours,
//! so it cannot be resumed under its account); live resources are capped
//! apart (`max_resources`, the resource table's capacity) in every case.

mod allocator;

pub use allocator::CountingAllocator;

use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use wasmtime::CallHook;

/// Accounts at most (instances alive, plus those whose memory outlives
/// them). An instance that finds none runs uncounted, and says so.
const MAX_ACCOUNTS: usize = 1 << 16;
const NO_ACCOUNT: u32 = u32::MAX;

/// Bytes each account holds now.
static USED: [AtomicUsize; MAX_ACCOUNTS] = [const { AtomicUsize::new(0) }; MAX_ACCOUNTS];
/// Whether each account's instance is alive (memory it made and that is
/// regrown after it is gone leaves the account).
static LIVE: [AtomicBool; MAX_ACCOUNTS] = [const { AtomicBool::new(false) }; MAX_ACCOUNTS];
/// Accounts never used yet start here.
static NEXT_FRESH: AtomicU32 = AtomicU32::new(0);
/// Accounts free to reuse, and those whose instance is gone but whose
/// memory is still held (reusable once it is all freed).
static FREE: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static RETIRED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

thread_local! {
    /// The account host allocations on this thread are charged to now, and
    /// the task they must come from (so a task that runs while a guest's
    /// host call waits is not charged).
    static CHARGE: Cell<(u32, Option<tokio::task::Id>)> = const { Cell::new((NO_ACCOUNT, None)) };
}

/// The account charged now on this thread, if the running task is the one
/// that set it.
fn charged() -> Option<u32> {
    let (account, task) = CHARGE.with(Cell::get);
    (account != NO_ACCOUNT && tokio::task::try_id() == task).then_some(account)
}

fn charge(account: u32) {
    CHARGE.with(|c| c.set((account, tokio::task::try_id())));
}

fn uncharge() -> (u32, Option<tokio::task::Id>) {
    CHARGE.with(|c| c.replace((NO_ACCOUNT, None)))
}

/// Whether host allocations are being counted in this process: the
/// [`CountingAllocator`] is the global allocator and its arena exists.
pub fn is_counting() -> bool {
    allocator::enable()
}

/// A guest made the host hold more memory than its limit.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the instance made the host hold {used} bytes, over its limit of {limit} bytes (max_host_memory_mb)")]
pub struct HostMemoryExceeded {
    /// Bytes held when the limit was found passed.
    pub used: usize,
    /// The limit, in bytes.
    pub limit: usize,
}

/// One instance's host-memory account: what its host calls made the host
/// hold, against its limit.
pub struct HostMemory {
    account: u32,
    limit: usize,
    /// Host calls in progress (a host call may call back into the guest,
    /// which may call the host again).
    depth: u32,
}

impl HostMemory {
    /// An account for a new instance that may make the host hold `limit`
    /// bytes; uncounted (and logged, once) when accounting is off or every
    /// account is taken.
    pub fn open(limit: usize) -> Self {
        let account = if allocator::is_enabled() { take_account() } else { NO_ACCOUNT };
        if account != NO_ACCOUNT {
            LIVE[account as usize].store(true, Ordering::Release);
        }
        Self { account, limit, depth: 0 }
    }

    /// Bytes the instance makes the host hold now.
    pub fn used(&self) -> usize {
        if self.account == NO_ACCOUNT { 0 } else { USED[self.account as usize].load(Ordering::Relaxed) }
    }

    /// Whether this instance's host memory is counted.
    pub fn is_counted(&self) -> bool {
        self.account != NO_ACCOUNT
    }

    /// The store's call hook: charges host calls to the account, and traps
    /// the guest when one returns with the account over its limit.
    pub fn on_call(&mut self, hook: CallHook) -> wasmtime::Result<()> {
        if self.account == NO_ACCOUNT {
            return Ok(());
        }
        match hook {
            CallHook::CallingHost => {
                self.depth += 1;
                charge(self.account);
            }
            CallHook::ReturningFromHost => {
                self.depth = self.depth.saturating_sub(1);
                if self.depth == 0 {
                    uncharge();
                }
                let used = self.used();
                if used > self.limit {
                    return Err(HostMemoryExceeded { used, limit: self.limit }.into());
                }
            }
            // Back in a host call after calling into the guest.
            CallHook::ReturningFromWasm if self.depth > 0 => charge(self.account),
            CallHook::CallingWasm | CallHook::ReturningFromWasm => {}
        }
        Ok(())
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        if self.account == NO_ACCOUNT {
            return;
        }
        if CHARGE.with(Cell::get).0 == self.account {
            uncharge();
        }
        LIVE[self.account as usize].store(false, Ordering::Release);
        let list = if USED[self.account as usize].load(Ordering::Acquire) == 0 { &FREE } else { &RETIRED };
        list.lock().unwrap_or_else(|e| e.into_inner()).push(self.account);
    }
}

fn take_account() -> u32 {
    if let Some(account) = FREE.lock().unwrap_or_else(|e| e.into_inner()).pop() {
        return account;
    }
    let fresh = NEXT_FRESH.fetch_add(1, Ordering::Relaxed);
    if (fresh as usize) < MAX_ACCOUNTS {
        return fresh;
    }
    NEXT_FRESH.store(MAX_ACCOUNTS as u32, Ordering::Relaxed);
    // Accounts whose instance is gone come back once their memory is.
    let mut retired = RETIRED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(at) = retired.iter().position(|&a| USED[a as usize].load(Ordering::Acquire) == 0) {
        return retired.swap_remove(at);
    }
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(
            accounts = MAX_ACCOUNTS,
            "every host-memory account is taken: new instances run with their host memory uncounted"
        );
    });
    NO_ACCOUNT
}

pin_project_lite::pin_project! {
    /// Runs a guest's task so that a host call it is in the middle of when
    /// it waits is charged again when it resumes, and nothing else the
    /// thread runs meanwhile is.
    pub struct Charged<F> {
        #[pin]
        inner: F,
        paused: Option<(u32, Option<tokio::task::Id>)>,
    }
}

impl<F> Charged<F> {
    /// Wraps `inner`.
    pub fn new(inner: F) -> Self {
        Self { inner, paused: None }
    }
}

impl<F: Future> Future for Charged<F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let this = self.project();
        if let Some(paused) = this.paused.take() {
            CHARGE.with(|c| c.set(paused));
        }
        let result = this.inner.poll(cx);
        if charged().is_some() {
            *this.paused = Some(uncharge());
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_counts_what_a_host_call_holds_until_it_is_freed_anywhere() {
        assert!(is_counting(), "the unit tests run with the counting allocator");
        let mut account = HostMemory::open(1000);
        assert!(account.is_counted());
        // Outside a host call nothing is charged.
        let before = vec![0u8; 4000];
        assert_eq!(account.used(), 0);
        account.on_call(CallHook::CallingHost).unwrap();
        let held = vec![1u8; 600];
        let mut grown = Vec::<u8>::with_capacity(10);
        grown.extend_from_slice(&[2; 300]);
        // Still under the limit: the call returns.
        account.on_call(CallHook::ReturningFromHost).unwrap();
        assert!(account.used() >= 900 && account.used() < 1000, "{}", account.used());
        // Memory freed on another thread is credited all the same.
        std::thread::spawn(move || drop(held)).join().unwrap();
        assert!(account.used() < 400, "{}", account.used());
        // A host call that takes it over the limit traps on return.
        account.on_call(CallHook::CallingHost).unwrap();
        let big = vec![3u8; 2000];
        let error = account.on_call(CallHook::ReturningFromHost).unwrap_err();
        let exceeded = error.downcast_ref::<HostMemoryExceeded>().expect("the limit's error");
        assert!(exceeded.used >= 2000 && exceeded.limit == 1000);
        drop((big, grown, before));
        assert_eq!(account.used(), 0, "everything charged was credited");
        // Outside the call, allocations are not charged.
        let after = vec![0u8; 5000];
        assert_eq!(account.used(), 0);
        drop(after);
    }

    #[test]
    fn memory_that_outlives_its_instance_keeps_the_account_until_freed() {
        assert!(is_counting());
        let mut account = HostMemory::open(1 << 20);
        account.on_call(CallHook::CallingHost).unwrap();
        let kept = vec![0u8; 100];
        account.on_call(CallHook::ReturningFromHost).unwrap();
        let index = account.account as usize;
        drop(account);
        assert!(USED[index].load(Ordering::Relaxed) >= 100);
        assert!(!LIVE[index].load(Ordering::Relaxed));
        // Regrowing it after its instance is gone takes it out of the account.
        let mut kept = kept;
        kept.reserve(10_000);
        assert_eq!(USED[index].load(Ordering::Relaxed), 0);
    }
}
