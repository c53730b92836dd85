//! What one instance may hold, summed over everything it holds: every
//! linear memory of every core instance in the component together stays
//! under the component's memory ceiling, every table together under its
//! table-element ceiling. (wasmtime's `StoreLimits` bounds each memory on
//! its own, so a component with eight memories could take eight times its
//! ceiling.) Growth past a ceiling fails the way `memory.grow` fails (the
//! guest sees -1; an allocator that cannot cope traps).
//!
//! The counts are bounded too: a component needing more memories or tables
//! than an instance's share of the pool is refused when it is loaded
//! ([`check_shares`]), so one component can never exhaust the pool's slots.

use crate::manifest::InstanceLimits;
use anyhow::{Result, bail};
use wasmtime::ResourceLimiter;

/// Linear memories one instance may have: its share of the pool.
pub const MEMORIES_PER_INSTANCE: u32 = 2;
/// Tables one instance may have (a Rust component has a few: its own and
/// the shims `wit-component` adds).
pub const TABLES_PER_INSTANCE: u32 = 8;
/// Core instances one component instance may create.
pub const CORE_INSTANCES_PER_INSTANCE: u32 = 20;

/// The limiter of one instance's store.
pub struct InstanceLimiter {
    memory: Ceiling,
    table_elements: Ceiling,
}

/// One summed ceiling: what is used of it, and the growth last allowed,
/// taken back if the engine then fails it.
struct Ceiling {
    max: usize,
    used: usize,
    pending: usize,
}

impl Ceiling {
    fn new(max: usize) -> Self {
        Self { max, used: 0, pending: 0 }
    }

    /// Allows growing one memory or table from `current` to `desired` if
    /// the sum stays under the ceiling.
    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let growth = desired.saturating_sub(current);
        if self.used.saturating_add(growth) > self.max {
            return false;
        }
        self.used += growth;
        self.pending = growth;
        true
    }

    fn take_back(&mut self) {
        self.used -= std::mem::take(&mut self.pending);
    }
}

impl InstanceLimiter {
    /// A limiter for `limits`.
    pub fn new(limits: &InstanceLimits) -> Self {
        Self {
            memory: Ceiling::new(usize::try_from(limits.max_memory).unwrap_or(usize::MAX)),
            table_elements: Ceiling::new(limits.max_table_elements),
        }
    }

    /// Bytes of linear memory the instance holds now, all memories summed.
    pub fn memory_used(&self) -> usize {
        self.memory.used
    }
}

impl ResourceLimiter for InstanceLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.memory.grow(current, desired))
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory.take_back();
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.table_elements.grow(current, desired))
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.table_elements.take_back();
        Ok(())
    }

    fn instances(&self) -> usize {
        CORE_INSTANCES_PER_INSTANCE as usize
    }

    fn tables(&self) -> usize {
        TABLES_PER_INSTANCE as usize
    }

    fn memories(&self) -> usize {
        MEMORIES_PER_INSTANCE as usize
    }
}

/// Refuses a component that needs more memories or tables than one
/// instance's share of the pool.
pub fn check_shares(component: &wasmtime::component::Component) -> Result<()> {
    let Some(required) = component.resources_required() else {
        bail!("it instantiates core modules it imports, which Wharf cannot size; it is not served");
    };
    if required.num_memories > MEMORIES_PER_INSTANCE {
        bail!(
            "it has {} linear memories; an instance may have at most {MEMORIES_PER_INSTANCE} (its share of the instance pool)",
            required.num_memories
        );
    }
    if required.num_tables > TABLES_PER_INSTANCE {
        bail!(
            "it has {} tables; an instance may have at most {TABLES_PER_INSTANCE} (its share of the instance pool)",
            required.num_tables
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memories_are_summed_against_one_ceiling() {
        let limits = InstanceLimits {
            max_memory: 16 << 20,
            max_table_elements: 100,
            fuel: None,
            max_outbound_requests: 1,
            max_concurrent_outbound_requests: 1,
            max_host_memory: 1 << 20,
            max_resources: 100,
        };
        let mut limiter = InstanceLimiter::new(&limits);
        assert!(limiter.memory_growing(0, 10 << 20, None).unwrap(), "the first memory");
        assert!(!limiter.memory_growing(0, 10 << 20, None).unwrap(), "a second one would pass the ceiling");
        assert!(limiter.memory_growing(0, 6 << 20, None).unwrap(), "up to the ceiling is fine");
        assert_eq!(limiter.memory_used(), 16 << 20);
        assert!(!limiter.memory_growing(6 << 20, (6 << 20) + 1, None).unwrap());
        // A growth the engine then fails is given back.
        let mut limiter = InstanceLimiter::new(&limits);
        assert!(limiter.memory_growing(0, 8 << 20, None).unwrap());
        limiter.memory_grow_failed(wasmtime::Error::msg("no room")).unwrap();
        assert_eq!(limiter.memory_used(), 0);
        assert!(limiter.table_growing(0, 60, None).unwrap());
        assert!(!limiter.table_growing(0, 60, None).unwrap(), "tables are summed too");
    }
}
