//! The allocator: jemalloc, set up to give freed memory back to the system by itself.
//!
//! Every socket holds a few small long-lived blocks (its tasks, its read buffer, its queue)
//! and passes through larger short-lived ones while it connects. glibc's malloc left the
//! freed short-lived blocks as holes between the long-lived ones (about 5 KiB a socket
//! beyond its 7 KiB of live blocks) and kept closed sessions' pages until `malloc_trim`
//! walked its heaps; it also took a quarter of the server's CPU under answers
//! (`perf`: `_int_malloc`, `malloc_consolidate`, `free`). jemalloc's size classes leave
//! fewer holes, and its background thread returns pages that stayed unused for a second,
//! whatever the runtime's threads are doing; mimalloc, tried too, kept the freed pages in
//! each worker thread's own heap. Figures: README, *Performance*, item 9.

/// Every allocation of every process that links this crate: the server, its tests, and
/// the load generator (`load/`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, which it reads from this symbol when it starts (the environment's
/// `_RJEM_MALLOC_CONF` still overrides them): a background thread purges, pages unused for
/// 1 s are returned (`dirty_decay_ms`; the default is 10 s), and returned at once rather than
/// through a second, lazier stage (`muzzy_decay_ms`). The crate's one unsafe item: a C
/// string that jemalloc reads through a pointer, with the name it looks for.
#[allow(unsafe_code, non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: Option<&'static std::ffi::c_char> = Some(
    // SAFETY: a pointer to the first byte of a NUL-terminated static string, valid for
    // the life of the process; jemalloc only reads it.
    unsafe { &*OPTIONS.as_ptr() },
);

/// The options as jemalloc parses them.
pub const OPTIONS: &std::ffi::CStr = c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jemalloc_runs_with_our_options() {
        // Allocating makes sure jemalloc has started and read its options.
        let held = vec![0u8; 1 << 20];
        assert_eq!(held.len(), 1 << 20);
        let background: bool = tikv_jemalloc_ctl::opt::background_thread::read().unwrap();
        assert!(background, "jemalloc did not read {OPTIONS:?}");
    }
}
