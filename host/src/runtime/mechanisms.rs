//! Which of the instance pool's fast paths this machine gives us: the
//! per-request cost of resetting a slot depends on the kernel more than on
//! anything in Wharf, so `wharf up` says at start which paths are in use,
//! warns when a slower fallback is taken, and `/healthz` and the benchmark
//! report the same, so two runs on two machines can be compared.

use super::AllocatorKind;
use serde::Serialize;
use wasmtime::PoolingAllocationConfig;

/// Bytes of linear memory a pool slot keeps mapped between requests.
pub const MEMORY_KEEP_RESIDENT: usize = 1 << 20;
/// The same, without pagemap scan: every reset clears all of it by `memset`,
/// so less is kept (what lies beyond is returned with `madvise` instead).
pub const MEMORY_KEEP_RESIDENT_WITHOUT_SCAN: usize = 64 << 10;
/// Bytes of tables a pool slot keeps mapped between requests.
pub const TABLE_KEEP_RESIDENT: usize = 64 << 10;

/// The pool-reset mechanisms in use.
#[derive(Debug, Clone, Serialize)]
pub struct PoolMechanisms {
    /// `pooling` or `on_demand` (an `mmap` per instance).
    pub allocator: &'static str,
    /// The kernel reports which pages a request dirtied (`PAGEMAP_SCAN`,
    /// Linux 6.7+), so only those are reset.
    pub pagemap_scan: bool,
    /// Linear memory kept mapped per slot and reset in place.
    pub memory_keep_resident_bytes: usize,
    /// Table memory kept mapped per slot.
    pub table_keep_resident_bytes: usize,
    /// Memory protection keys (packing more slots into the address space):
    /// whether the CPU and kernel offer them. Wharf's slots are small, so it
    /// does not use them.
    pub memory_protection_keys_available: bool,
    /// Data segments mapped copy-on-write from an in-memory image
    /// (`memfd`), instead of copied on each instantiation.
    pub copy_on_write_images: bool,
    /// The kernel's transparent huge page mode (`always`, `madvise`,
    /// `never`, or `unknown`).
    pub transparent_huge_pages: String,
}

impl PoolMechanisms {
    /// What this machine offers, for an engine with `allocator`;
    /// `pagemap_scan_allowed` is false only to measure the fallback.
    pub fn detect(allocator: AllocatorKind, pagemap_scan_allowed: bool) -> Self {
        let pooling = allocator == AllocatorKind::Pooling;
        let pagemap_scan =
            pooling && pagemap_scan_allowed && PoolingAllocationConfig::is_pagemap_scan_available();
        Self {
            allocator: if pooling { "pooling" } else { "on_demand" },
            pagemap_scan,
            memory_keep_resident_bytes: match (pooling, pagemap_scan) {
                (false, _) => 0,
                (true, true) => MEMORY_KEEP_RESIDENT,
                (true, false) => MEMORY_KEEP_RESIDENT_WITHOUT_SCAN,
            },
            table_keep_resident_bytes: if pooling { TABLE_KEEP_RESIDENT } else { 0 },
            memory_protection_keys_available: memory_protection_keys_available(),
            copy_on_write_images: memfd_available(),
            transparent_huge_pages: transparent_huge_pages(),
        }
    }

    /// Logs what is in use, and a warning for each slower fallback taken.
    pub fn log(&self) {
        tracing::info!(
            allocator = self.allocator,
            pagemap_scan = self.pagemap_scan,
            memory_keep_resident_bytes = self.memory_keep_resident_bytes,
            copy_on_write_images = self.copy_on_write_images,
            transparent_huge_pages = %self.transparent_huge_pages,
            "instance pool"
        );
        if self.allocator == "on_demand" {
            tracing::warn!(
                "instance pool: on-demand allocation (an mmap and munmap per request, several times the CPU of a pool slot)"
            );
        } else if !self.pagemap_scan {
            tracing::warn!(
                keep_resident = self.memory_keep_resident_bytes,
                "instance pool: the kernel has no PAGEMAP_SCAN (Linux 6.7+): each reset clears the kept memory whole and returns the rest with madvise, which costs more per request"
            );
        }
        if !self.copy_on_write_images {
            tracing::warn!(
                "instance pool: no memfd: each instance copies its data segments instead of mapping them copy-on-write"
            );
        }
        if self.transparent_huge_pages == "always" {
            tracing::warn!(
                "transparent huge pages are `always`: the kernel may back pool slots with 2 MiB pages, so a reset can clear far more than a request touched; `madvise` is the mode to prefer"
            );
        }
    }
}

/// Whether `memfd_create` works here (wasmtime's copy-on-write images need
/// it for images not mapped from a file; seccomp sandboxes may forbid it).
fn memfd_available() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: a plain syscall on a constant NUL-terminated name; the
        // descriptor it returns is closed at once.
        #[allow(unsafe_code, reason = "probing a syscall; no safe wrapper in our dependencies")]
        unsafe {
            let fd = libc::memfd_create(c"wharf-probe".as_ptr(), libc::MFD_CLOEXEC);
            if fd < 0 {
                return false;
            }
            libc::close(fd);
        }
        true
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Whether the CPU has protection keys and the kernel enabled them (the
/// `ospke` flag; wasmtime's own probe is behind a feature we do not build).
fn memory_protection_keys_available() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "ospke"))
    })
}

fn transparent_huge_pages() -> String {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .ok()
        .and_then(|modes| {
            let start = modes.find('[')? + 1;
            let end = start + modes[start..].find(']')?;
            Some(modes[start..end].to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_pool_it_was_given() {
        let pooled = PoolMechanisms::detect(AllocatorKind::Pooling, true);
        assert_eq!(pooled.allocator, "pooling");
        assert!(pooled.memory_keep_resident_bytes > 0);
        assert!(["always", "madvise", "never", "unknown"].contains(&pooled.transparent_huge_pages.as_str()));
        let on_demand = PoolMechanisms::detect(AllocatorKind::OnDemand, true);
        assert_eq!(
            (on_demand.allocator, on_demand.pagemap_scan, on_demand.memory_keep_resident_bytes),
            ("on_demand", false, 0)
        );
        let without_scan = PoolMechanisms::detect(AllocatorKind::Pooling, false);
        assert!(!without_scan.pagemap_scan);
        assert_eq!(without_scan.memory_keep_resident_bytes, MEMORY_KEEP_RESIDENT_WITHOUT_SCAN);
    }
}
