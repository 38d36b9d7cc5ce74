//! Behaviour of the embedded store against a real SQLite database in a temporary directory.

use super::*;
use crate::store::{AnswerRow, EncodedEntries};

fn answered(id: &str, created_ms: u64) -> AnswerRow {
    IdemRow { request_id: id.into(), account_id: "a".into(), fingerprint: 7, outcome: vec![1, 2], created_ms }.into()
}

#[test]
fn every_stored_account_state_is_handed_over_once() {
    use crate::store::encode_account;
    let dir = tempfile::tempdir().unwrap();
    let mut store = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
    let account = |id: &str, name: &str| {
        let mut a = Account::blank(id, chrono::Utc::now());
        a.display_name = name.into();
        (id.to_string(), encode_account(&a))
    };
    store.write(&mut Batch { accounts: vec![account("a", "first"), account("b", "b")], ..Batch::default() }).unwrap();
    store.write(&mut Batch { accounts: vec![account("a", "second")], ..Batch::default() }).unwrap();

    assert_eq!(store.account_count().unwrap(), 2);
    let mut seen = Vec::new();
    store
        .each_account(&mut |state| {
            seen.push(decode_account(state)?);
            Ok(())
        })
        .unwrap();
    seen.sort_by(|x, y| x.id.cmp(&y.id));
    let names: Vec<(&str, &str)> = seen.iter().map(|a| (a.id.as_str(), a.display_name.as_str())).collect();
    assert_eq!(names, [("a", "second"), ("b", "b")], "the latest state of each account");

    let failed = store.each_account(&mut |_| Err(StoreError::Failed("stop".into())));
    assert!(matches!(failed, Err(StoreError::Failed(m)) if m == "stop"), "the callback's error ends the scan");
}

#[test]
fn states_move_from_the_log_to_the_table_and_read_back_the_same() {
    use crate::store::encode_account;
    let dir = tempfile::tempdir().unwrap();
    let state = |id: &str, version: u32| {
        let mut a = Account::blank(id, chrono::Utc::now());
        a.display_name = format!("v{version}");
        (id.to_string(), encode_account(&a))
    };
    let names = |store: &mut EmbeddedStore| {
        let mut seen = Vec::new();
        store
            .each_account(&mut |s| {
                let a = decode_account(s)?;
                seen.push((a.id, a.display_name));
                Ok(())
            })
            .unwrap();
        seen.sort();
        seen
    };
    let count = |store: &EmbeddedStore, table: &str| {
        store.conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get::<_, i64>(0)).unwrap()
    };
    let mut store = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
    store.log.budget = 2 * state("a", 0).1.len(); // about two states
    for version in 1..=3 {
        store
            .write(&mut Batch { accounts: vec![state("a", version), state("b", version)], ..Batch::default() })
            .unwrap();
    }
    store.write(&mut Batch { accounts: vec![state("a", 4)], ..Batch::default() }).unwrap();
    let want = [("a".to_string(), "v4".to_string()), ("b".to_string(), "v3".to_string())];
    assert_eq!(names(&mut store), want);
    assert_eq!(store.load_account("a").unwrap().unwrap().display_name, "v4", "the log's newest");
    assert_eq!(store.load_account("b").unwrap().unwrap().display_name, "v3");
    assert!(count(&store, "accounts") == 2, "older states moved to the table");
    assert!(count(&store, "account_log") < 4, "and their log rows went");

    drop(store);
    let mut store = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
    assert_eq!(names(&mut store), want, "read back after a reopen: the log over the table");
    assert_eq!(store.account_count().unwrap(), 2 + store.log.len());

    // One account alone: its states replace each other and never move, yet the log stays short.
    store.log.budget = 3 * state("a", 0).1.len();
    for version in 5..=50 {
        store.write(&mut Batch { accounts: vec![state("a", version)], ..Batch::default() }).unwrap();
    }
    assert!(count(&store, "account_log") <= 4, "{} log rows", count(&store, "account_log"));
    assert_eq!(store.load_account("a").unwrap().unwrap().display_name, "v50");
}

/// The pages `each_answer_page` hands over since `since_ms`, with their request ids.
fn answer_pages(store: &mut EmbeddedStore, since_ms: u64) -> Vec<(u64, Vec<String>)> {
    let mut pages = Vec::new();
    store
        .each_answer_page(since_ms, &mut |page, rows| {
            pages.push((page, rows.into_iter().map(|r| r.request_id).collect()));
            Ok(())
        })
        .unwrap();
    pages
}

#[test]
fn prune_forgets_only_answers_past_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
    for i in 1..=5 {
        store.write(&mut Batch { idempotency: vec![answered(&format!("r{i}"), i * 100)], ..Batch::default() }).unwrap();
    }
    assert_eq!(store.prune_requests(50).unwrap(), Pruned { pages: 0, first_kept_page: 1 });
    assert_eq!(store.prune_requests(350).unwrap(), Pruned { pages: 3, first_kept_page: 4 }, "a page per commit");
    let pages = answer_pages(&mut store, 0);
    assert_eq!(pages, [(5, vec!["r5".to_string()]), (4, vec!["r4".to_string()])], "newest page first");

    // The newest page stays, so the next is numbered after it, not from 1 again.
    assert_eq!(store.prune_requests(u64::MAX >> 1).unwrap(), Pruned { pages: 1, first_kept_page: 5 });
    let next = store.write(&mut Batch { idempotency: vec![answered("r6", 600)], ..Batch::default() }).unwrap();
    assert_eq!(next.answers_page, 6);
}

#[test]
fn each_commit_puts_its_answers_on_a_page_where_they_are_found_until_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
    let first =
        store.write(&mut Batch { idempotency: vec![answered("b", 100), answered("a", 200)], ..Batch::default() });
    let none = store.write(&mut Batch { entries: EncodedEntries::default(), accounts: Vec::new(), ..Batch::default() });
    let second = store.write(&mut Batch { idempotency: vec![answered("c", 300)], ..Batch::default() });
    let (first, second) = (first.unwrap().answers_page, second.unwrap().answers_page);
    assert_eq!(none.unwrap().answers_page, 0, "a commit without answers has no page");
    assert!(first > 0 && second > first, "pages are numbered from 1, in commit order: {first}, {second}");

    let reader = EmbeddedStore::reader(dir.path()).unwrap();
    use crate::store::RequestLookup;
    assert_eq!(reader.find_answer("a", first).unwrap().unwrap().created_ms, 200);
    assert!(reader.find_answer("a", second).unwrap().is_none(), "only on its own page");
    assert!(reader.find_answer("zz", first).unwrap().is_none());
    assert_eq!(answer_pages(&mut store, 250), [(second, vec!["c".to_string()])], "only answers since then");
    assert_eq!(
        answer_pages(&mut store, 150),
        [(second, vec!["c".to_string()]), (first, vec!["a".to_string()])],
        "an older answer on a page that is kept is left out too"
    );
    store.prune_requests(250).unwrap();
    assert!(reader.find_answer("a", first).unwrap().is_none(), "its page is past retention");
    assert!(reader.find_answer("c", second).unwrap().is_some());
}

#[test]
fn a_store_that_indexed_evicted_answers_drops_the_index_and_keeps_every_page() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = Connection::open(EmbeddedStore::path(dir.path())).unwrap();
        for (i, sql) in MIGRATIONS[..2].iter().enumerate() {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", (i + 1) as i64).unwrap();
        }
        let rows = postcard::to_stdvec(&vec![answered("a", 100)]).unwrap();
        conn.execute("INSERT INTO answers (newest_ms, rows) VALUES (100, ?1)", [rows]).unwrap();
        conn.execute("INSERT INTO requests VALUES ('a', 'a', 7, x'0102', 100)", []).unwrap();
    }
    let mut store = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
    let tables: i64 =
        store.conn.query_row("SELECT count(*) FROM sqlite_master WHERE name = 'requests'", [], |r| r.get(0)).unwrap();
    assert_eq!(tables, 0);
    assert_eq!(answer_pages(&mut store, 0), [(1, vec!["a".to_string()])]);
}

#[test]
fn the_journal_reads_back_in_commit_order_and_new_ids_start_above_it() {
    use crate::domain::ids::{id_number, IdGenerator};
    use crate::domain::ledger::{EntryKind, LedgerEntry};
    let dir = tempfile::tempdir().unwrap();
    let ids = IdGenerator::default();
    let entry = |ms| LedgerEntry::new(ids.next_string("le_", ms), "a", EntryKind::Deduct, chrono::Utc::now());
    let early = entry(1_000);
    let late = entry(2_000);
    let high = id_number(&late.id).unwrap();
    {
        let mut store = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
        // A later id can be written in an earlier commit (accounts queue independently).
        store.write(&mut Batch { entries: EncodedEntries::of([&late]), ..Batch::default() }).unwrap();
        store.write(&mut Batch { entries: EncodedEntries::of([&early]), ..Batch::default() }).unwrap();
    }
    let mut store = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
    assert_eq!(store.recover().unwrap().id_floor, high);
    let chunks = store.read_journal(0, 10).unwrap();
    let read: Vec<&LedgerEntry> = chunks.iter().flat_map(|c| &c.entries).collect();
    assert_eq!(read, [&late, &early]);
    assert_eq!(store.read_journal(chunks[0].seq, 10).unwrap()[0].entries, [early]);
}

#[test]
fn new_stores_use_small_pages_and_older_ones_keep_theirs() {
    let page_size = |store: &EmbeddedStore| store.conn.pragma_query_value(None, "page_size", |r| r.get::<_, i64>(0));
    let fresh = tempfile::tempdir().unwrap();
    assert_eq!(page_size(&EmbeddedStore::open(fresh.path(), Synchronous::Normal).unwrap()).unwrap(), PAGE_SIZE);

    let older = tempfile::tempdir().unwrap();
    {
        let conn = Connection::open(EmbeddedStore::path(older.path())).unwrap();
        conn.pragma_update(None, "page_size", 4096).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        migrate(&conn).unwrap();
    }
    let mut store = EmbeddedStore::open(older.path(), Synchronous::Normal).unwrap();
    assert_eq!(page_size(&store).unwrap(), 4096);
    let written = store.write(&mut Batch { idempotency: vec![answered("a", 100)], ..Batch::default() }).unwrap();
    assert_eq!(answer_pages(&mut store, 0), [(written.answers_page, vec!["a".to_string()])]);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
    assert!(matches!(EmbeddedStore::open(dir.path(), Synchronous::Normal), Err(StoreError::Locked(_))));
}

/// Rows written before migration 0004 are plain postcard (`packed` = 0): the store writes
/// packed rows now and still reads both, in every table that has them.
#[test]
fn rows_written_before_packing_read_back_beside_packed_ones() {
    use crate::domain::ids::IdGenerator;
    use crate::domain::ledger::{EntryKind, LedgerEntry};
    use crate::store::encode_account;
    use crate::store::RequestLookup;
    let dir = tempfile::tempdir().unwrap();
    let ids = IdGenerator::default();
    let entry = || LedgerEntry::new(ids.next_string("le_", 1_000), "a", EntryKind::Deduct, chrono::Utc::now());
    let (old_entry, new_entry) = (entry(), entry());
    let state = |name: &str| {
        let mut a = Account::blank("a", chrono::Utc::now());
        a.display_name = name.into();
        ("a".to_string(), encode_account(&a))
    };
    let plain = Batch {
        accounts: vec![state("plain")],
        entries: EncodedEntries::of([&old_entry]),
        idempotency: vec![answered("old", 100)],
        ..Batch::default()
    };
    {
        let conn = Connection::open(EmbeddedStore::path(dir.path())).unwrap();
        for (i, sql) in MIGRATIONS[..3].iter().enumerate() {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", (i + 1) as i64).unwrap();
        }
        let (log, entries, answers) = (
            postcard::to_stdvec(&rows::LogRow(&plain.accounts)).unwrap(),
            {
                let mut stored = Vec::new();
                plain.entries.write_stored(&mut stored);
                stored
            },
            postcard::to_stdvec(&plain.idempotency).unwrap(),
        );
        conn.execute("INSERT INTO account_log (seq, states) VALUES (1, ?1)", [log]).unwrap();
        conn.execute("INSERT INTO journal (written_ms, high_id, entries) VALUES (1, 1, ?1)", [entries]).unwrap();
        conn.execute("INSERT INTO answers (newest_ms, rows) VALUES (100, ?1)", [answers]).unwrap();
    }
    let mut store = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
    assert_eq!(store.load_account("a").unwrap().unwrap().display_name, "plain", "the plain log row");
    let second = store
        .write(&mut Batch {
            accounts: vec![state("packed")],
            entries: EncodedEntries::of([&new_entry]),
            idempotency: vec![answered("new", 200)],
            ..Batch::default()
        })
        .unwrap()
        .answers_page;
    let packed: Vec<i64> = ["account_log", "journal", "answers"]
        .iter()
        .map(|t| store.conn.query_row(&format!("SELECT max(packed) FROM {t}"), [], |r| r.get(0)).unwrap())
        .collect();
    assert_eq!(packed, [rows::LZ4; 3], "new rows are packed");

    let read: Vec<LedgerEntry> = store.read_journal(0, 10).unwrap().into_iter().flat_map(|c| c.entries).collect();
    assert_eq!(read, [old_entry, new_entry]);
    assert_eq!(answer_pages(&mut store, 0), [(second, vec!["new".to_string()]), (1, vec!["old".to_string()])]);
    let reader = EmbeddedStore::reader(dir.path()).unwrap();
    assert_eq!(reader.find_answer("old", 1).unwrap().unwrap().created_ms, 100);
    assert_eq!(reader.find_answer("new", second).unwrap().unwrap().created_ms, 200);
    drop(store);
    let mut store = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
    assert_eq!(store.load_account("a").unwrap().unwrap().display_name, "packed", "the packed log row, reread");
}

#[test]
fn a_damaged_or_unknown_packing_is_an_error_not_a_guess() {
    let mut packer = rows::Packer::default();
    let value = vec![answered("a", 1); 20];
    let (packed, plain_len) = packer.pack(&value);
    let packed = packed.to_vec();
    assert_eq!(plain_len, postcard::to_stdvec(&value).unwrap().len());
    assert!(packed.len() < plain_len, "repetitive rows shrink");
    let back: Vec<IdemRow> = rows::unpack_decode(&packed, rows::LZ4, "answers").unwrap();
    assert_eq!(back.len(), 20);

    let mut huge = packed.clone();
    huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = rows::unpack(&huge, rows::LZ4, "answers").unwrap_err();
    assert!(err.to_string().contains("impossible length"), "{err}");
    assert!(rows::unpack(&packed[..3], rows::LZ4, "answers").is_err(), "too short for a length");
    assert!(rows::unpack(&packed[..packed.len() - 3], rows::LZ4, "answers").is_err(), "truncated");
    let err = rows::unpack(&packed, 9, "answers").unwrap_err();
    assert!(err.to_string().contains("newer creditd"), "{err}");
}

/// Commits never checkpoint (that is the checkpoint thread's work, stopped here), and the
/// writer's upkeep between commits rewinds the log once it is due, so it stops growing.
#[test]
fn the_log_grows_until_the_writer_rewinds_it_between_commits() {
    use super::checkpoint::{Checkpoints, REWIND_COMMITS, REWIND_PAGES};
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let mut store = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
    let db = EmbeddedStore::path(dir.path());
    // The thread would rewind the log on its own schedule: one that never comes.
    store.checkpoints =
        Checkpoints::start(&store.conn, &db, Synchronous::Normal, std::time::Duration::from_secs(3_600)).unwrap();
    let mut commits = 0_u64;
    let mut commit = |store: &mut EmbeddedStore| {
        commits += 1;
        let answers = (0..20).map(|i| answered(&format!("r{commits}-{i}"), commits)).collect();
        store.write(&mut Batch { idempotency: answers, ..Batch::default() }).unwrap();
        store.tidy();
    };
    let log_bytes = || std::fs::metadata(db.with_extension("db-wal")).unwrap().len();

    for _ in 1..REWIND_COMMITS {
        commit(&mut store);
    }
    let grown = log_bytes();
    let sqlite_threshold = 1_000 * PAGE_SIZE as u64;
    assert!(grown > 2 * sqlite_threshold, "no commit checkpointed: the log grew to {grown} bytes");

    commit(&mut store); // the writer rewinds after it
    for _ in 1..REWIND_COMMITS {
        commit(&mut store);
    }
    let regrown = log_bytes();
    assert!(regrown <= grown + grown / 10, "written again from its start: {grown} then {regrown} bytes");

    // A long log, as the thread would report it, is rewound at the next upkeep.
    store.checkpoints.log_pages.store(REWIND_PAGES, Ordering::Relaxed);
    commit(&mut store);
    assert_eq!(store.checkpoints.log_pages.load(Ordering::Relaxed), 0, "rewound");

    drop(store);
    let mut store = EmbeddedStore::open(dir.path(), Synchronous::Normal).unwrap();
    let pages = answer_pages(&mut store, 0);
    assert_eq!(pages.len() as u64, commits, "every commit's answers read back after a reopen");
    assert!(pages.iter().all(|(_, ids)| ids.len() == 20));
}
