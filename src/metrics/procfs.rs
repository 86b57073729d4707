//! The process's own resource figures read from `/proc` (resident memory, thread count) for
//! the `swapd_process_*` gauges and `/api/status`; `None` where `/proc` does not exist.

/// Reads the resident set size from `/proc/self/statm`; `None` where that file does not exist.
pub(crate) fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant and has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page_size = u64::try_from(page_size).ok().filter(|&size| size > 0)?;
    Some(pages.saturating_mul(page_size))
}

/// Reads the thread count from `/proc/self/status`; `None` where that file does not exist.
pub(crate) fn thread_count() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|value| value.trim().parse().ok())
}
