//! How `levee run`'s heap gives memory back. glibc (the dynamically linked build) makes up to
//! eight malloc arenas per core and keeps the pages freed inside them until asked: with a
//! thousand policies ticking every second that held tens of MiB that held nothing
//! (docs/benchmarks.md). So: two arenas, and the freed pages handed back every few seconds. The
//! static image's allocator (musl) returns freed pages by itself; there this does nothing.

use std::time::Duration;

/// How often freed pages go back to the system.
pub const GIVE_BACK_EVERY: Duration = Duration::from_secs(10);

/// At most two malloc arenas. Call before any thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Hands freed heap pages back to the system every `GIVE_BACK_EVERY`, for ever.
pub async fn give_back_freed_pages() {
    let mut every = tokio::time::interval(GIVE_BACK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free memory the allocator holds; it is thread-safe.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
