//! Gives freed heap memory back to the system.
//!
//! Each socket's buffers and tasks are small allocations spread over glibc's heap arenas,
//! and glibc returns a freed page to the system only from the top of a heap, so free pages
//! stay resident in two cases:
//!
//! - **Sessions closed.** When thousands of sockets close, the arenas keep the freed pages,
//!   so the process's resident memory stays at its peak (measured: 19,000 idle sockets
//!   closed, RSS unchanged two seconds later).
//! - **A burst of connects.** Each connect allocates far more for a moment (the HTTP
//!   request's read buffer, the JWT, the stream's load and the greeting) than its session
//!   keeps; those short-lived blocks are freed between the long-lived ones, so the heap
//!   holds holes of free pages. Measured with 19,000 idle sockets connected at 5,000/s: 12.5
//!   KiB a socket in use, 17 to 21 KiB a socket resident.
//!
//! `malloc_trim` returns the free pages of every arena. It walks the heaps, so it runs only
//! after many sessions have closed, or once many have opened and the opening has paused
//! (not in the middle of a burst, which would only make new holes).

use std::time::Duration;

use crate::state::AppState;

/// How often the number of live sessions is looked at: an atomic load, so often enough
/// that a burst's pages go back soon after it ends.
pub const EVERY: Duration = Duration::from_millis(250);
/// How many sessions must have closed since the last trim (or the peak after it), or
/// opened since the last trim, for the next one.
const CHANGED_FOR_A_TRIM: usize = 1_000;

/// Decides when to trim from the live-session counts it is shown.
#[derive(Debug, Default)]
pub struct Trimmer {
    /// The most sessions live since the last trim.
    peak: usize,
    /// The sessions live at the last trim.
    at_trim: usize,
    /// The sessions live at the previous look.
    previous: usize,
}

impl Trimmer {
    /// Whether to trim now, with `live` sessions open.
    pub fn should_trim(&mut self, live: usize) -> bool {
        let growing = live > self.previous;
        self.previous = live;
        self.peak = self.peak.max(live);
        let closed = self.peak - live >= CHANGED_FOR_A_TRIM;
        let opened_then_paused = !growing && live >= self.at_trim + CHANGED_FOR_A_TRIM;
        if closed || opened_then_paused {
            self.peak = live;
            self.at_trim = live;
            return true;
        }
        false
    }
}

/// Returns the heap's free memory to the system; whether any was. The crate's one unsafe
/// call: a C function of glibc, which the libc crate can only declare unsafe.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn trim() -> bool {
    // SAFETY: malloc_trim takes no pointer and touches no live allocation: it releases
    // free pages of glibc's own heaps, under the same locks as every other malloc call.
    unsafe { libc::malloc_trim(0) != 0 }
}

/// Elsewhere (musl, other systems) there is no such call; their allocators return memory
/// on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}

/// Trims after every [`CHANGED_FOR_A_TRIM`] sessions that closed, or that opened once the
/// opening paused, looking every [`EVERY`].
pub async fn run(state: AppState) {
    let mut trimmer = Trimmer::default();
    let mut every = tokio::time::interval(EVERY);
    loop {
        every.tick().await;
        if trimmer.should_trim(state.registry.live()) {
            // Off the runtime's threads: a trim of a large heap takes milliseconds.
            let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
            tracing::debug!(released, "heap trimmed after sessions closed or opened");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_per_thousand_closed_sessions_below_the_peak() {
        let mut trimmer = Trimmer::default();
        assert!(!trimmer.should_trim(5_000), "still opening");
        // Opening paused with 5,000 more than at the last trim.
        assert!(trimmer.should_trim(5_000));
        assert!(!trimmer.should_trim(4_001));
        assert!(trimmer.should_trim(4_000));
        // The count now starts from 4,000: another 999 closed is not enough.
        assert!(!trimmer.should_trim(3_001));
        assert!(!trimmer.should_trim(3_001));
        // Growth raises the peak again; no trim while it goes on.
        assert!(!trimmer.should_trim(6_000));
        assert!(trimmer.should_trim(0));
        assert!(!trimmer.should_trim(0));
    }

    #[test]
    fn trims_once_opening_pauses_after_a_thousand_opened() {
        let mut trimmer = Trimmer::default();
        for live in [300, 2_000, 9_000, 19_000] {
            assert!(!trimmer.should_trim(live), "not in the middle of a burst");
        }
        assert!(trimmer.should_trim(19_000), "the burst paused");
        assert!(!trimmer.should_trim(19_000), "once");
        // A few more, then a pause: under a thousand since the trim.
        assert!(!trimmer.should_trim(19_500));
        assert!(!trimmer.should_trim(19_500));
        // Closing a few then opening again is not growth past the last trim.
        assert!(!trimmer.should_trim(18_900));
        assert!(!trimmer.should_trim(19_400));
        assert!(!trimmer.should_trim(19_400));
    }
}
