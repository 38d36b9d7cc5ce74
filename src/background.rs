//! Housekeeping that must not take time from requests. Each run gets a thread of its own at
//! the lowest priority, so on a busy core it uses only what requests and the journal writer
//! leave over.
//!
//! At half load on one core, a sweep at normal priority that needs a second of CPU (expiring
//! millions of kept answers, compacting 100k idle accounts) takes half the core from requests
//! while it runs: they queue behind it, and that shows in every percentile above p99.
//!
//! On a core requests keep busy, such a thread gets nothing. Where that cannot wait (the
//! eviction sweep holding the answers to their memory bound), requests pace themselves to
//! it: `crate::pacing`.

/// The nice value of housekeeping threads where `SCHED_IDLE` is refused.
const HOUSEKEEPING_NICE: i32 = 19;

/// Runs `work` on a new thread at the lowest priority and waits for it without blocking the
/// runtime. `None` if the thread could not start or `work` panicked.
pub async fn run<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let started = std::thread::Builder::new().name("creditd-sweep".into()).spawn(move || {
        yield_as_housekeeping();
        let _ = tx.send(work());
    });
    if let Err(e) = started {
        tracing::warn!(error = %e, "could not start a housekeeping thread; it runs at the next tick");
        return None;
    }
    rx.await.ok()
}

/// Puts the calling thread behind requests and the journal writer: under `SCHED_IDLE`
/// rather than at nice 19, which still outranked an `idle` journal writer five to one (CFS
/// weights 15 and 3).
pub fn yield_as_housekeeping() {
    if !idle_this_thread() {
        lower_this_thread(HOUSEKEEPING_NICE);
    }
}

/// Gives the calling thread the nice value `nice` (Linux only). Returns whether it could: an
/// unprivileged process may lower a thread's priority, never raise it.
#[allow(unsafe_code)]
pub fn lower_this_thread(nice: i32) -> bool {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on this thread's own id; no memory is passed.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice) == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = nice;
        false
    }
}

/// Puts the calling thread under the `SCHED_IDLE` policy (Linux only): it runs when nothing
/// else of ordinary priority wants its core, and a request thread that wakes up takes the
/// core from it at once, where a thread at a low nice value keeps it for the rest of its
/// slice (milliseconds). Returns whether it could.
#[allow(unsafe_code)]
pub fn idle_this_thread() -> bool {
    #[cfg(target_os = "linux")]
    // SAFETY: a plain syscall on this thread (pid 0) with a parameter that outlives it.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0
    }
    #[cfg(not(target_os = "linux"))]
    false
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn work_runs_on_a_thread_of_its_own_and_its_result_comes_back() {
        let caller = std::thread::current().id();
        let (result, thread) = super::run(|| (6 * 7, std::thread::current().id())).await.unwrap();
        assert_eq!(result, 42);
        assert_ne!(thread, caller);
        assert_eq!(super::run(|| -> u8 { panic!("a sweep failed") }).await, None);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_thread_runs_under_the_idle_policy_below_the_journal_writer() {
        let policy = super::run(|| {
            // SAFETY: reads this thread's own policy.
            #[allow(unsafe_code)]
            unsafe {
                libc::sched_getscheduler(0)
            }
        })
        .await;
        assert_eq!(policy, Some(libc::SCHED_IDLE));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_idle_thread_runs_under_the_idle_policy() {
        let policy = std::thread::spawn(|| {
            assert!(super::idle_this_thread(), "lowering a thread's own policy needs no privilege");
            // SAFETY: reads this thread's own policy.
            #[allow(unsafe_code)]
            unsafe {
                libc::sched_getscheduler(0)
            }
        })
        .join()
        .unwrap();
        assert_eq!(policy, libc::SCHED_IDLE);
    }
}
