//! How `levee run`'s heap gives memory back. glibc (the dynamically linked build) makes up to
//! eight malloc arenas per core and keeps the pages freed inside them until asked: with a
//! thousand policies ticking every second that held tens of MiB that held nothing (88.1 against
//! 76.3 MiB with this, docs/benchmarks.md#scale). So: two arenas, and the freed pages handed back
//! every few seconds, on a blocking thread (a trim walks the whole heap). The static image
//! allocates with jemalloc, set up in `src/main.rs` (two arenas, its own thread hands pages
//! back): there only its count is read.

/// At most two malloc arenas. Call before any thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Every 10 s, for ever: hands freed heap pages back to the system where the allocator does not
/// do it itself (glibc: a trim walks the whole heap, so on a blocking thread), then sets
/// `allocated` to the bytes the allocator counts as held by levee's allocations (jemalloc's
/// `stats.allocated`, glibc's in-use arena and mmapped bytes): set against the resident memory,
/// it says how much of that is levee's own data and how much the allocator's free pages.
pub fn start_tending(allocated: prometheus::IntGauge) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Ok(Some(bytes)) = tokio::task::spawn_blocking(give_back_and_count).await {
                allocated.set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
        }
    })
}

/// glibc: trims the heap, then sums what its arenas and mmapped chunks hold in use.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn give_back_and_count() -> Option<u64> {
    // SAFETY: malloc_trim only releases free memory the allocator holds, and mallinfo2 only
    // reads its counters; both are thread-safe.
    let info = unsafe {
        libc::malloc_trim(0);
        libc::mallinfo2()
    };
    Some(info.uordblks as u64 + info.hblkhd as u64)
}

/// jemalloc (the static build): it hands pages back on its own thread; its counters are read
/// as of a new epoch.
#[cfg(target_env = "musl")]
fn give_back_and_count() -> Option<u64> {
    tikv_jemalloc_ctl::epoch::advance().ok()?;
    tikv_jemalloc_ctl::stats::allocated::read()
        .ok()
        .map(|bytes| bytes as u64)
}

/// Elsewhere: nothing to do, nothing known.
#[cfg(not(any(all(target_os = "linux", target_env = "gnu"), target_env = "musl")))]
fn give_back_and_count() -> Option<u64> {
    None
}
