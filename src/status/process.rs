//! The process's own resources, for whoever watches a box for months:
//! resident memory, open descriptors and threads from `/proc/self`, and,
//! with the `jemalloc` feature (the default), the allocator's live heap.
//!
//! Resident memory alone cannot tell a leak from an allocator keeping freed
//! pages. Under glibc's malloc the soak (5 000 samples/s) saw RSS climb by
//! about 5 MiB in its first 8 minutes and later rise in unexplained steps,
//! while heaptrack showed the live heap flat at 5.8 MiB (RELIABILITY.md,
//! Soak). So jemalloc is the global allocator, purging freed pages on a
//! background thread ([`purge_in_background`]), and both figures are
//! exported.
//!
//! `heap_allocated_bytes` is jemalloc's `stats.allocated`: it counts the
//! objects its per-thread caches hold for reuse as allocated, so it too
//! rises for the first minutes of a new load and then levels off; the
//! sampling heap profiler (feature `heap-profiling`) is the tool that shows
//! what the program itself holds.
//!
//! Metrics, on every scrape: `process_resident_memory_bytes`,
//! `process_open_fds`, `process_max_fds` (the names of Prometheus's client
//! libraries' process collectors), `gsinfer_threads`,
//! `gsinfer_heap_allocated_bytes` and `gsinfer_heap_resident_bytes`.

use std::fmt;
use std::fs;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use serde::Serialize;

use super::sources::MetricFamilies;

/// One reading of the process's resources. A field is `None` where its
/// source could not be read (no `/proc`, or no jemalloc).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProcessStats {
    /// Resident set size, bytes (`/proc/self/statm`).
    pub rss_bytes: Option<u64>,
    /// Open file descriptors (`/proc/self/fd`).
    pub open_fds: Option<u64>,
    /// Soft limit on open descriptors (`RLIMIT_NOFILE`).
    pub max_fds: Option<u64>,
    /// Threads (`/proc/self/stat`, field 20).
    pub threads: Option<u64>,
    /// Bytes in allocations, including objects jemalloc's per-thread caches
    /// keep for reuse (jemalloc's `stats.allocated`).
    pub heap_allocated_bytes: Option<u64>,
    /// Bytes of physical memory the allocator holds, live or not
    /// (jemalloc's `stats.resident`).
    pub heap_resident_bytes: Option<u64>,
}

impl ProcessStats {
    /// Reads every figure now; costs a few system calls and, with jemalloc,
    /// one statistics refresh (`epoch`).
    pub fn read() -> Self {
        let (heap_allocated_bytes, heap_resident_bytes) = heap();
        Self {
            rss_bytes: rss_bytes(),
            open_fds: fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64),
            max_fds: max_fds(),
            threads: threads(),
            heap_allocated_bytes,
            heap_resident_bytes,
        }
    }

    /// Every figure as a gauge, full names (the collector sits on the root
    /// registry, which adds no prefix).
    fn metrics(&self, out: &mut MetricFamilies) {
        let mut gauge = |name, help, value: Option<u64>| {
            if let Some(v) = value {
                out.gauge(name, help, &[], v);
            }
        };
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            self.rss_bytes,
        );
        gauge(
            "process_open_fds",
            "Number of open file descriptors.",
            self.open_fds,
        );
        gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            self.max_fds,
        );
        gauge(
            "gsinfer_threads",
            "Threads of the gsinfer process.",
            self.threads,
        );
        gauge(
            "gsinfer_heap_allocated_bytes",
            "Bytes in heap allocations, including jemalloc's thread caches \
             (stats.allocated); level while RSS grows means the allocator, not a leak.",
            self.heap_allocated_bytes,
        );
        gauge(
            "gsinfer_heap_resident_bytes",
            "Physical memory the allocator holds, live or free (jemalloc stats.resident).",
            self.heap_resident_bytes,
        );
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 on error.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

fn rss_bytes() -> Option<u64> {
    let statm = fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn threads() -> Option<u64> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may contain spaces: count from its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state); threads is field 20.
    rest.split_whitespace().nth(17)?.parse().ok()
}

fn max_fds() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the call's duration.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// Starts jemalloc's background purging thread, so pages freed after a
/// burst return to the system about 10 s later (jemalloc's default
/// `dirty_decay_ms`) even while the service is idle between passes; without
/// it jemalloc purges only inside allocation calls. A no-op `Ok` without the
/// `jemalloc` feature.
///
/// # Errors
/// jemalloc's `mallctl` error (as text) when background threads are
/// unsupported on this platform.
pub fn purge_in_background() -> Result<(), String> {
    #[cfg(feature = "jemalloc")]
    tikv_jemalloc_ctl::background_thread::write(true).map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(feature = "jemalloc")]
fn heap() -> (Option<u64>, Option<u64>) {
    use tikv_jemalloc_ctl::{epoch, stats};
    // jemalloc caches its statistics; advancing the epoch refreshes them.
    if epoch::advance().is_err() {
        return (None, None);
    }
    (
        stats::allocated::read().ok().map(|v| v as u64),
        stats::resident::read().ok().map(|v| v as u64),
    )
}

#[cfg(not(feature = "jemalloc"))]
fn heap() -> (Option<u64>, Option<u64>) {
    (None, None)
}

/// Writes one [`ProcessStats`] reading per scrape, under the full names
/// listed in the module docs: register it on the root registry, not under
/// the `gsinfer` prefix.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut families = MetricFamilies::default();
        ProcessStats::read().metrics(&mut families);
        families.encode(&mut encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = ProcessStats::read();
        // The test binary holds at least its own executable's pages and
        // stdin/stdout/stderr, and runs at least this thread.
        assert!(s.rss_bytes.unwrap() > 1 << 20);
        assert!(s.open_fds.unwrap() >= 3);
        assert!(s.threads.unwrap() >= 1);
        assert!(s.max_fds.is_none_or(|m| m >= s.open_fds.unwrap()));
    }

    #[cfg(feature = "jemalloc")]
    #[test]
    fn background_purging_starts() {
        purge_in_background().unwrap();
        assert!(tikv_jemalloc_ctl::background_thread::read().unwrap());
    }

    #[cfg(feature = "jemalloc")]
    #[test]
    fn the_live_heap_follows_an_allocation() {
        // jemalloc is the global allocator of every binary linking this
        // library with the feature on, including this test binary.
        let before = ProcessStats::read().heap_allocated_bytes.unwrap();
        // Zeroed, so the pages are never touched: the allocator counts the
        // bytes all the same.
        let block = std::hint::black_box(vec![0u8; 1 << 30]);
        let during = ProcessStats::read().heap_allocated_bytes.unwrap();
        drop(block);
        let after = ProcessStats::read().heap_allocated_bytes.unwrap();
        // Tests on other threads allocate and free meanwhile (tens of MiB):
        // the slack covers them.
        assert!(during >= before + (768 << 20), "{before} -> {during}");
        assert!(after + (768 << 20) <= during, "{during} -> {after}");
    }
}
