//! What the machine has: the memory figures of `/proc/meminfo` that budgets are made from.

/// A `/proc/meminfo` entry in bytes (`None` where the file or the key is missing).
fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.split(':').next() == Some(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The machine's memory (`MemTotal`), or 16 GB where that is unknown.
pub fn total_memory() -> u64 {
    meminfo("MemTotal").unwrap_or(16_000_000_000)
}

/// The memory a new allocation can get now without swapping (`MemAvailable`), or half of
/// [`total_memory`] where that is unknown.
pub fn available_memory() -> u64 {
    meminfo("MemAvailable").unwrap_or_else(|| total_memory() / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_figures_are_plausible() {
        let (total, available) = (total_memory(), available_memory());
        assert!(total >= 1 << 28, "{total}");
        assert!(
            available > 0 && available <= total,
            "{available} of {total}"
        );
    }
}
