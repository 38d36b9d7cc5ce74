//! How the journal writer shares a core with request handling.

use super::Durability;

/// How the writer yields to request handling when both share a busy core (Linux only).
///
/// At equal priority the writer preempts the runtime as soon as one request queues: commits
/// stay small, and the runtime stalls on an account lock the writer holds. Yielding, it runs
/// when requests are waiting on it anyway and commits what piled up meanwhile (52k → 61k
/// sync calls/s on one core at nice 10). With a core to itself nothing changes.
///
/// It must still outrank housekeeping (`background`), whose sweeps can take a second of CPU:
/// in `sync` durability every answer waits for the writer. With an `idle` writer and
/// housekeeping at nice 19, a sweep took most of the spare core from it: once the kept
/// answers reached their bound, each eviction made answers wait up to half a second (one
/// core, sync, open loop at 40k calls/s: p99 3.6 ms on a fresh server, 470-590 ms at the
/// bound; 8-11 ms with a `low` writer). What `low` costs when no sweep runs: about 9% of the
/// closed-loop sync rate on one core.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriterPriority {
    /// `low` in `sync` durability, where every answer waits for the writer; `idle` in
    /// `async`, where none does, and requests pause for the writer once it falls behind
    /// (`Pacing`).
    #[default]
    Auto,
    /// `SCHED_IDLE`: a request that arrives takes the core back at once, rather than after
    /// the writer's slice, which shortens the tail at half load (p99 1.2-1.6 → 1.0 ms, one
    /// core). Against other processes' busy threads it gets next to nothing, so on a host
    /// whose cores are busy with other work (no CPU cgroup of its own), prefer `low`. It
    /// shares the spare core equally with housekeeping, so under `sync` a long sweep still
    /// delays answers (357 ms p99 in the case above).
    Idle,
    /// Nice 10: a smaller share of a busy core, but a share, and ahead of housekeeping.
    Low,
}

impl WriterPriority {
    /// The priority the writer takes under `durability`: `Idle` or `Low`.
    pub fn under(self, durability: Durability) -> WriterPriority {
        match (self, durability) {
            (WriterPriority::Auto, Durability::Sync) => WriterPriority::Low,
            (WriterPriority::Auto, Durability::Async) => WriterPriority::Idle,
            (chosen, _) => chosen,
        }
    }
}

const WRITER_NICE: i32 = 10;

pub(super) fn yield_to_requests(priority: WriterPriority) {
    if priority == WriterPriority::Idle && crate::background::idle_this_thread() {
        return;
    }
    if !crate::background::lower_this_thread(WRITER_NICE) {
        tracing::debug!("could not lower the journal writer's priority; it competes with requests as equals");
    }
}
