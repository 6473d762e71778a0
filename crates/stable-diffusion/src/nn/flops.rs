//! A process-wide count of the floating-point operations done by the heavy building blocks
//! (linear layers, convolutions, attention), for benchmarks that report GFLOP/s.

use std::sync::atomic::{AtomicU64, Ordering};

static TOTAL: AtomicU64 = AtomicU64::new(0);

/// Adds `n` operations to the count.
pub(crate) fn add(n: u64) {
    TOTAL.fetch_add(n, Ordering::Relaxed);
}

/// The operations counted since the last [`reset`].
pub fn total() -> u64 {
    TOTAL.load(Ordering::Relaxed)
}

/// Sets the count to zero.
pub fn reset() {
    TOTAL.store(0, Ordering::Relaxed);
}
