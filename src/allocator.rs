//! The process allocator (mimalloc, set in each binary) and the two settings of the
//! process's memory that show on the hot path.

/// `mi_option_purge_delay` of `mi_option_e` in mimalloc.h. mimalloc keeps its options'
/// numbers stable (retired options keep their slot); its Rust bindings name only some.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets the process's memory up for serving: both settings below. Every binary of the
/// project calls it, the load tests' baseline too, so ratios compare like with like.
///
/// Call first thing in `main`, before any other thread starts.
pub fn set_up_process() {
    keep_freed_memory();
    // Before logging is set up; on a kernel too old to refuse huge pages only latency suffers.
    let _ = small_pages_only();
}

/// Keeps freed heap pages for reuse instead of handing them back to the kernel.
///
/// A request allocates on the runtime thread and the journal writer frees much of it on its
/// own. Pages empty out, and by default mimalloc returns them to the kernel a second later,
/// so later requests fault them back in, zeroed: a fifth of the server's time under load
/// went to that (perf: `clear_page_erms`), and keeping the pages gives 7% (one account) to
/// 18% (spread over 100k accounts) more deductions per second. What it costs: the heap
/// never shrinks below its high-water mark, which for this server is its steady state
/// (accounts, answers kept for a day) plus what one busy second of requests allocates.
#[allow(unsafe_code)]
fn keep_freed_memory() {
    const NEVER: std::ffi::c_long = -1;
    // SAFETY: sets one integer option. mimalloc's option setter is not thread safe, and this
    // runs before any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, NEVER) }
}

/// Maps the heap in 4 KiB pages only, never in transparent 2 MiB ones.
///
/// The heap grows all day (every answer is kept for retries), and mimalloc asks for huge
/// pages. Each first touch of one then zeroes 2 MiB while the runtime thread waits, several
/// milliseconds on a virtual machine, and every request queued behind it waits too. At
/// half the maximum rate that was the p99: 4.1–5.3 ms against 0.9–1.5 ms with small pages
/// (async), 5.9–6.5 ms against 3.0–3.3 ms (sync), while closed-loop throughput did not
/// move. Small pages fault 512 times as often, microseconds each, spread evenly.
/// Redis advises the same for the same reason.
///
/// Applies to the whole process, to memory already mapped as well (the kernel checks at
/// each fault). Refused only by a kernel without the call (before 3.15); huge pages then
/// stay.
#[allow(unsafe_code)]
fn small_pages_only() -> std::io::Result<()> {
    // SAFETY: sets one flag of this process; no memory is passed.
    match unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
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

    #[test]
    #[allow(unsafe_code)]
    fn the_process_is_kept_to_small_pages() {
        super::small_pages_only().expect("a kernel since 3.15 has the call");
        // SAFETY: reads one flag of this process.
        let disabled = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(disabled, 1, "transparent huge pages stay on");
    }
}
