//! Which account states live only in the store's state log, and when to move them into the
//! `accounts` table.
//!
//! Every group commit appends the states it touched as one log row: a few sequential pages,
//! however many accounts. Rewriting each account's row in the `accounts` B-tree at every
//! commit instead cost a random page per touched account, written twice (WAL, then
//! checkpoint), which bounded every spread or batched load. A state moves into the table
//! only once the log outgrows its budget, oldest first, and only if no later commit replaced
//! it meanwhile: an account touched again within the log's span is written once, not at
//! every commit. The log rows before the oldest state still needed are then deleted.
//!
//! This is the bookkeeping alone, kept in memory beside the store; `embedded` does the I/O.

use std::collections::{HashMap, VecDeque};

/// Hashed with foldhash, like the engine's maps: every commit hashes each account it logs.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The states only the log holds, and the log rows they are in.
#[derive(Debug)]
pub struct AccountLog {
    /// The newest logged state of each account whose table row is behind.
    latest: Map<String, Logged>,
    /// (row seq, account id) in log order; an entry is stale once its account was logged
    /// again later (`latest` holds a newer seq).
    order: VecDeque<(u64, String)>,
    /// (seq, bytes) of the log rows still stored, oldest first.
    rows: VecDeque<(u64, usize)>,
    bytes: usize,
    next_seq: u64,
    pub(super) budget: usize,
}

#[derive(Debug)]
struct Logged {
    seq: u64,
    state: Vec<u8>,
}

/// States to move into the table in one commit (`AccountLog::moving`), and the log rows
/// that may go with them.
#[derive(Debug, Default, PartialEq)]
pub struct Checkpoint {
    /// Log rows below this seq hold nothing still needed.
    pub keep_from: u64,
    /// Whether any stored row is below `keep_from`.
    pub drops_rows: bool,
    /// How many entries of `order` this checkpoint consumes (live and stale).
    consumed: usize,
}

impl AccountLog {
    /// An empty log whose rows may take up to `budget` bytes before states move to the table.
    pub fn new(budget: usize) -> Self {
        AccountLog {
            latest: Map::default(),
            order: VecDeque::new(),
            rows: VecDeque::new(),
            bytes: 0,
            next_seq: 1,
            budget,
        }
    }

    /// The seq the next appended row gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Records a row written (or read back at start-up) under `seq`, holding `states`.
    pub fn append(&mut self, seq: u64, row_bytes: usize, states: impl IntoIterator<Item = (String, Vec<u8>)>) {
        for (id, state) in states {
            self.order.push_back((seq, id.clone()));
            self.latest.insert(id, Logged { seq, state });
        }
        self.rows.push_back((seq, row_bytes));
        self.bytes += row_bytes;
        self.next_seq = self.next_seq.max(seq + 1);
    }

    /// The newest logged state of `id`, if the table's row is behind it.
    pub fn state(&self, id: &str) -> Option<&[u8]> {
        self.latest.get(id).map(|l| l.state.as_slice())
    }

    /// Every account whose newest state is in the log.
    pub fn states(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.latest.iter().map(|(id, l)| (id.as_str(), l.state.as_slice()))
    }

    /// How many accounts have their newest state in the log.
    pub fn len(&self) -> usize {
        self.latest.len()
    }

    /// What to move into the table so that the log, with `incoming` more bytes, fits its
    /// budget again. Changes nothing: `checkpointed` applies it once it is committed.
    pub fn plan(&self, incoming: usize) -> Checkpoint {
        let mut plan =
            Checkpoint { keep_from: self.rows.front().map_or(self.next_seq, |r| r.0), ..Checkpoint::default() };
        let mut bytes = self.bytes + incoming;
        let mut rows = self.rows.iter().peekable();
        while bytes > self.budget {
            let Some((seq, _)) = self.order.get(plan.consumed) else {
                break;
            };
            // Rows entirely before this entry hold only states already moved or replaced.
            while let Some(&&(row_seq, row_bytes)) = rows.peek() {
                if row_seq >= *seq {
                    break;
                }
                bytes -= row_bytes;
                rows.next();
            }
            plan.keep_from = *seq;
            if bytes <= self.budget {
                break;
            }
            plan.consumed += 1;
        }
        if plan.consumed == self.order.len() && bytes > self.budget {
            // Everything logged so far moves: no older row is needed.
            plan.keep_from = self.next_seq;
        }
        plan.drops_rows = self.rows.front().is_some_and(|r| r.0 < plan.keep_from);
        plan
    }

    /// The (account id, state) pairs `plan` moves into the table, oldest first: the entries
    /// it consumes that no later commit replaced.
    pub fn moving<'a>(&'a self, plan: &Checkpoint) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        self.order.range(..plan.consumed).filter_map(|(seq, id)| {
            self.latest.get(id).filter(|l| l.seq == *seq).map(|l| (id.as_str(), l.state.as_slice()))
        })
    }

    /// Applies a committed `plan`.
    pub fn checkpointed(&mut self, plan: Checkpoint) {
        for (seq, id) in self.order.drain(..plan.consumed) {
            if self.latest.get(&id).is_some_and(|l| l.seq == seq) {
                self.latest.remove(&id);
            }
        }
        while self.rows.front().is_some_and(|r| r.0 < plan.keep_from) {
            let (_, row_bytes) = self.rows.pop_front().expect("checked");
            self.bytes -= row_bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(ids: &[&str], tag: u8) -> Vec<(String, Vec<u8>)> {
        ids.iter().map(|id| (id.to_string(), vec![tag; 10])).collect()
    }

    fn ids<'a>(log: &'a AccountLog, plan: &Checkpoint) -> Vec<&'a str> {
        log.moving(plan).map(|(id, _)| id).collect()
    }

    #[test]
    fn within_budget_nothing_moves() {
        let mut log = AccountLog::new(100);
        log.append(1, 40, states(&["a", "b"], 1));
        let plan = log.plan(40);
        assert_eq!((ids(&log, &plan), plan.keep_from, plan.drops_rows), (vec![], 1, false));
        assert_eq!(log.state("a"), Some(&[1u8; 10][..]));
    }

    #[test]
    fn over_budget_the_oldest_states_move_and_their_rows_go() {
        let mut log = AccountLog::new(100);
        log.append(1, 60, states(&["a", "b"], 1));
        log.append(2, 30, states(&["c"], 2));
        let seq = log.next_seq();
        let plan = log.plan(30);
        assert_eq!(ids(&log, &plan), ["a", "b"], "row 1 must go to fit 120 bytes into 100");
        assert_eq!(plan.keep_from, 2);
        log.checkpointed(plan);
        log.append(seq, 30, states(&["d"], 3));
        assert_eq!((log.state("a"), log.len()), (None, 2));
        assert_eq!(ids(&log, &log.plan(0)), Vec::<&str>::new(), "60 bytes left");
    }

    #[test]
    fn a_state_replaced_later_is_not_moved_and_does_not_pin_its_row() {
        let mut log = AccountLog::new(50);
        log.append(1, 40, states(&["hot", "a"], 1));
        log.append(2, 40, states(&["hot"], 2));
        let plan = log.plan(0);
        assert_eq!(ids(&log, &plan), ["a"], "row 1's `hot` was replaced by row 2's");
        assert_eq!(plan.keep_from, 2);
        log.checkpointed(plan);
        assert_eq!(log.state("hot"), Some(&[2u8; 10][..]));
        assert_eq!(log.state("a"), None);
    }

    #[test]
    fn a_hot_account_alone_never_moves_however_long_the_log_runs() {
        let mut log = AccountLog::new(50);
        for seq in 1..=100 {
            let plan = log.plan(20);
            assert!(ids(&log, &plan).is_empty(), "only replaced states are behind the newest row");
            assert_eq!(plan.drops_rows, seq > 2, "yet the rows holding them go");
            log.checkpointed(plan);
            log.append(seq, 20, states(&["hot"], seq as u8));
        }
        assert_eq!(log.state("hot"), Some(&[100u8; 10][..]));
        assert!(log.bytes <= 60, "old rows were dropped: {} bytes", log.bytes);
    }

    #[test]
    fn one_row_bigger_than_the_budget_moves_everything_before_it() {
        let mut log = AccountLog::new(10);
        log.append(1, 8, states(&["a"], 1));
        let plan = log.plan(50);
        assert_eq!((ids(&log, &plan), plan.keep_from), (vec!["a"], 2));
        log.checkpointed(plan);
        assert_eq!(log.len(), 0);
        assert_eq!(log.bytes, 0);
    }
}
