//! How `levee run`'s heap gives memory back. glibc (the dynamically linked build) makes up to
//! eight malloc arenas per core and keeps the pages freed inside them until asked: with a
//! thousand policies ticking every second that held tens of MiB that held nothing (88.1 against
//! 76.3 MiB with this, docs/benchmarks.md#scale). So: two arenas, and the freed pages handed back
//! every few seconds, on a blocking thread (a trim walks the whole heap). The static image
//! allocates with jemalloc, set up in `src/main.rs` (two arenas, its own thread hands pages
//! back): there nothing here runs.

/// At most two malloc arenas. Call before any thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Starts handing freed heap pages back to the system every 10 s, for ever; `None` where the
/// allocator hands pages back itself (the static build: jemalloc).
pub fn start_giving_back_freed_pages() -> Option<tokio::task::JoinHandle<()>> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        Some(tokio::spawn(async {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                // SAFETY: malloc_trim only releases free memory the allocator holds; it is
                // thread-safe.
                let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
            }
        }))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}
