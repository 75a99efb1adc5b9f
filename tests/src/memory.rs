//! A process's memory as Linux reports it in `/proc/<pid>/status`, to bound what a spawned
//! process (a data plane proxying a large body) holds.

use anyhow::{Context, Result};

/// A process's resident memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss: u64,
    /// `VmHWM`: the peak resident set size since the process started. The kernel batches
    /// per-thread counters, so it may lag `rss` by a few hundred KiB.
    pub peak: u64,
}

// === impl Memory ===

impl Memory {
    /// Reads `VmRSS` and `VmHWM` of process `pid` from `/proc/<pid>/status` (Linux only).
    pub fn of(pid: u32) -> Result<Memory> {
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |name: &str| -> Result<u64> {
            // A line like `VmHWM:     12345 kB`.
            let line = status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .with_context(|| format!("no {name} in {path}"))?;
            let kib: u64 = line
                .trim()
                .strip_suffix("kB")
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("{name} in {path}: {line:?}"))?;
            Ok(kib * 1024)
        };
        Ok(Memory {
            rss: field("VmRSS")?,
            peak: field("VmHWM")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_follows_what_the_process_touches() -> Result<()> {
        const SIZE: usize = 64 * 1024 * 1024;
        let before = Memory::of(std::process::id())?;
        assert!(before.rss > 0 && before.peak >= before.rss, "{before:?}");
        // Touch every page, so they are resident, not just reserved.
        let block = vec![1u8; SIZE];
        let during = Memory::of(std::process::id())?;
        assert_eq!(
            block
                .iter()
                .step_by(4096)
                .map(|b| *b as usize)
                .sum::<usize>(),
            SIZE / 4096
        );
        drop(block);
        let after = Memory::of(std::process::id())?;
        assert!(
            during.rss >= before.rss + SIZE as u64 * 9 / 10,
            "{before:?} {during:?}"
        );
        assert!(
            after.peak >= before.rss + SIZE as u64 * 9 / 10,
            "{before:?} {after:?}"
        );
        Ok(())
    }
}
