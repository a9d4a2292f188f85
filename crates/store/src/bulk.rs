//! When a bulk load ([`crate::Store::begin_bulk_load`]) is worth putting
//! off index work for: one rule for every backend.
//!
//! A backend that defers drops its secondary indexes when the load begins
//! and builds each once, sorted, when it ends. That pays only when the load
//! dwarfs what the database holds: the builds cover every row, old and new,
//! and readers go without the indexes while the load lasts.

/// Smaller loads keep the indexes: maintaining them costs less than even
/// the fixed cost of the builds.
pub const MIN_LOAD: u64 = 10_000;

/// A load is deferred only when it is at least this many times what the
/// database holds.
pub const LOAD_RATIO: u64 = 4;

/// The most current resources a store may hold for a load of `expected`
/// resources to defer its index work; `None` when the load is too small to
/// defer at all. (A bound, not a predicate, so a backend need count only up
/// to it: on a big database a full count is a scan.)
#[must_use]
pub fn most_held_to_defer(expected: u64) -> Option<u64> {
    (expected >= MIN_LOAD).then_some(expected / LOAD_RATIO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_loads_never_defer_and_big_ones_allow_a_quarter() {
        assert_eq!(most_held_to_defer(MIN_LOAD - 1), None);
        assert_eq!(most_held_to_defer(MIN_LOAD), Some(2_500));
        assert_eq!(most_held_to_defer(1_000_000), Some(250_000));
    }
}
