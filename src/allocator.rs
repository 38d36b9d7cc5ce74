//! The process allocator (mimalloc, set in each binary) and the one option of it that shows
//! on the hot path.

/// `mi_option_purge_delay` of `mi_option_e` in mimalloc.h. mimalloc keeps its options'
/// numbers stable (retired options keep their slot); its Rust bindings name only some.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed heap pages for reuse instead of handing them back to the kernel.
///
/// A request allocates on the runtime thread and the journal writer frees much of it on its
/// own. Pages empty out, and by default mimalloc returns them to the kernel a second later,
/// so later requests fault them back in, zeroed: a fifth of the server's time under load
/// went to that (perf: `clear_page_erms`), and keeping the pages gives 7% (one account) to
/// 18% (spread over 100k accounts) more deductions per second. What it costs: the heap never shrinks below its
/// high-water mark, which for this server is its steady state (accounts, answers kept for a
/// day) plus what one busy second of requests allocates.
///
/// Call first thing in `main`, before any other thread starts.
#[allow(unsafe_code)]
pub fn keep_freed_memory() {
    const NEVER: std::ffi::c_long = -1;
    // SAFETY: sets one integer option. mimalloc's option setter is not thread safe, and this
    // runs before any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, NEVER) }
}

#[cfg(test)]
mod tests {
    #[test]
    #[allow(unsafe_code)]
    fn the_option_number_is_the_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return; // the default this test recognises the option by is overridden
        }
        // SAFETY: reads one integer option.
        let value = unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY) };
        assert_eq!(value, 1000, "mimalloc's default purge delay (ms); no other option defaults to it");
    }
}
