//! Memory footprint and start-up time, measured rather than assumed.
//!
//! Run: `cargo bench --bench footprint`. It prints, one line each:
//! - heap bytes per cached account (typical and bare), exactly as the engine keeps them
//!   (`Arc<AccountCell>` in a `DashMap<String, _>`), counted by a global allocator wrapper;
//! - heap bytes per entry of the idempotency table;
//! - the start-up time (open, then each account put in its cell compact as it is read) with
//!   many accounts on disk, and the size of the data directory.
//!
//! `FOOTPRINT_ACCOUNTS` sets how many accounts go on disk (default 1,000,000). Run by
//! `cargo test --benches` (no `--bench` argument) it uses small numbers so the suite stays fast.
//!
//! Byte counts are what the program asked the allocator for; malloc adds its own per-block
//! overhead (glibc: ~8–16 bytes a block, minimum 32), so the live block count is printed too,
//! and the resident-set growth of the first (fresh-heap) measurement as a cross-check.

mod common;

use common::{account_id, typical_account, Seq};

use creditd::domain::account::Account;
use creditd::domain::grant::{Grant, GrantKind};
use creditd::domain::hold::Hold;
use creditd::domain::ids::IdGenerator;
use creditd::domain::Now;
use creditd::engine::answered::Answered;
use creditd::engine::cell::{AccountCell, Pending};
use creditd::engine::clock::{Clock, SystemClock};
use creditd::engine::idempotency::{IdemEntry, Idempotency};
use creditd::engine::outcome::Outcome;
use creditd::engine::{idem_key, Engine, EngineOptions, Restored};
use creditd::journal::{Journal, JournalOptions};
use creditd::store::embedded::{EmbeddedStore, Synchronous};
use creditd::store::{Batch, RequestLookup, Store};
use dashmap::DashMap;
use rust_decimal::Decimal;
use std::alloc::{GlobalAlloc, Layout};
use std::mem::size_of;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---- counting allocator -------------------------------------------------------------------

/// Counts live bytes and blocks over the allocator the server uses.
struct Counting;

const INNER: mimalloc::MiMalloc = mimalloc::MiMalloc;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_BLOCKS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { INNER.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Relaxed);
            LIVE_BLOCKS.fetch_add(1, Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { INNER.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Relaxed);
            LIVE_BLOCKS.fetch_add(1, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { INNER.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size(), Relaxed);
        LIVE_BLOCKS.fetch_sub(1, Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { INNER.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(new_size, Relaxed);
            LIVE_BYTES.fetch_sub(layout.size(), Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Clone, Copy)]
struct Heap {
    bytes: usize,
    blocks: usize,
    rss: usize,
}

fn heap() -> Heap {
    Heap { bytes: LIVE_BYTES.load(Relaxed), blocks: LIVE_BLOCKS.load(Relaxed), rss: rss_bytes() }
}

impl Heap {
    /// Growth since `before`, per item: (bytes, blocks, rss bytes).
    fn per(self, before: Heap, n: usize) -> (f64, f64, f64) {
        let d = |a: usize, b: usize| a as f64 - b as f64;
        (
            d(self.bytes, before.bytes) / n as f64,
            d(self.blocks, before.blocks) / n as f64,
            d(self.rss, before.rss) / n as f64,
        )
    }
}

/// Resident set size from /proc (0 where there is none).
fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()))
        .map_or(0, |pages| pages * 4096)
}

/// Peak resident set size (VmHWM) from /proc (0 where there is none).
fn peak_rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<usize>().ok()))
        })
        .map_or(0, |kb| kb * 1024)
}

/// Heap bytes a clone of `v` holds (what `v` owns beyond its inline size, roughly).
fn heap_of<T: Clone>(v: &T) -> usize {
    let before = LIVE_BYTES.load(Relaxed);
    let c = v.clone();
    let after = LIVE_BYTES.load(Relaxed);
    drop(c);
    after - before
}

// ---- typical data -------------------------------------------------------------------------

/// A bare account: no plan, one purchased grant, no holds, no limits.
fn bare_account(i: usize, now: Now, ids: &IdGenerator) -> Account {
    let (mut a, _) = Account::blank(&account_id(i), now.wall).open(now, ids);
    let g = Grant::new(
        ids.next_string("gr_", now.wall_ms()),
        GrantKind::Purchase,
        Decimal::from(1_000),
        now.wall,
        now.wall,
    );
    a.add_grant(g, now, ids);
    a
}

/// An answered CheckAndDeduct as the engine remembers it.
fn deduct_entry(now_ms: u64, ids: &IdGenerator) -> IdemEntry {
    IdemEntry {
        fingerprint: 0x9e37_79b9_7f4a_7c15 ^ now_ms,
        answer: Answered::new(common::deduct_outcome(ids, now_ms).borrowed(), true),
        created_ms: now_ms,
    }
}

type Cache = DashMap<String, Arc<AccountCell>>;

fn cache_of(n: usize, mut make: impl FnMut(usize) -> Account) -> Cache {
    // As start-up builds it (`engine::Restored`): sized for what is stored.
    let map = DashMap::with_capacity(n);
    for i in 0..n {
        let a = make(i);
        map.insert(a.id.clone(), Arc::new(AccountCell::new(a)));
    }
    map
}

// ---- measurements -------------------------------------------------------------------------

fn memory(n: usize) {
    let clock = SystemClock::new();
    let now = clock.now();
    let ids = IdGenerator::default();
    let mut seq = Seq(0x2545_f491_4f6c_dd1d);

    // Typical first: the heap is fresh, so the RSS growth is meaningful too.
    let before = heap();
    let cache = cache_of(n, |i| typical_account(i, now, &ids, &mut seq));
    let (bytes, blocks, rss) = heap().per(before, n);
    println!(
        "memory: typical account: {bytes:.0} bytes/account ({blocks:.1} heap blocks/account; RSS grew {rss:.0} bytes/account) over {n} accounts"
    );

    // What one touched account keeps after its first group commit, done as the journal
    // writer does it: it takes the unwritten changes whole, so no capacity should stay.
    let before = heap();
    for cell in cache.iter() {
        let mut slot = cell.value().lock();
        slot.unwritten().pending.push(Pending::default());
        drop(slot.take_unwritten());
    }
    let (extra, _, _) = heap().per(before, n);
    println!(
        "memory: typical account after its first journaled change: +{extra:.0} bytes/account (size_of::<Pending>() = {})",
        size_of::<Pending>()
    );

    // Where a typical account's bytes go.
    let map_slot = {
        let before = LIVE_BYTES.load(Relaxed);
        let empty: Cache = DashMap::with_capacity(n);
        let bytes = LIVE_BYTES.load(Relaxed) - before;
        drop(empty);
        bytes as f64 / n as f64
    };
    let sample = cache.get(&account_id(0)).unwrap().value().clone();
    {
        let mut slot = sample.lock();
        let a = &*slot.account();
        println!(
            "memory: typical breakdown (heap bytes): map table {map_slot:.0}/account + key {}, Arc<AccountCell> block {} (inline Account {}), cell.id {}, id+display_name {}, plan {}, grants {} as cloned ({} x inline Grant {}; the live Vec has capacity {}), holds {} ({} x inline Hold {} in a sorted vector, and their running sums), limits {}, usage {}, resolved_holds {}",
            a.id.len(),
            size_of::<AccountCell>() + 16,
            size_of::<Account>(),
            // An `Arc<str>` block: its two counts, then the bytes.
            16 + sample.id.len(),
            a.id.capacity() + a.display_name.capacity(),
            heap_of(&a.plan),
            heap_of(&a.grants),
            a.grants.len(),
            size_of::<Grant>(),
            a.grants.capacity(),
            heap_of(&a.holds),
            a.holds.len(),
            size_of::<Hold>(),
            heap_of(&a.limits),
            heap_of(&a.usage),
            heap_of(&a.resolved_holds),
        );
        let json = serde_json::to_string(a).unwrap();
        let stored = creditd::store::encode_account(a);
        println!("memory: typical account state: {} bytes stored (postcard), {} as JSON", stored.len(), json.len());
    }
    drop(sample);

    // The same accounts once idle: kept compact until next used (`engine::cell`).
    let before = heap();
    for cell in cache.iter() {
        cell.value().lock().compact();
    }
    let (saved, blocks_saved, _) = before.per(heap(), n);
    let after = bytes - saved;
    println!(
        "memory: typical account kept compact: {after:.0} bytes/account ({:.1} heap blocks/account), {:.1}x less than decoded",
        blocks - blocks_saved,
        bytes / after
    );
    drop(cache);

    let before = heap();
    let cache = cache_of(n, |i| bare_account(i, now, &ids));
    let (bytes, blocks, _) = heap().per(before, n);
    println!("memory: bare account: {bytes:.0} bytes/account ({blocks:.1} heap blocks/account) over {n} accounts");
    drop(cache);

    let before = heap();
    let table = Idempotency::new(86_400_000, 5_000_000);
    let now_ms = now.wall_ms();
    for i in 0..n {
        let account = account_id(i % 1_000);
        let entry = deduct_entry(now_ms, &ids);
        table.insert(&idem_key(&account, &seq.uuid()), entry);
    }
    let (bytes, blocks, _) = heap().per(before, n);
    let kept_bytes = bytes;
    println!(
        "memory: idempotency entry (deduct answer): {bytes:.0} bytes/entry ({blocks:.1} heap blocks/entry) over {} entries; the answer kept encoded in {} bytes (size_of Outcome {}), IdemEntry {}",
        table.len(),
        deduct_entry(now_ms, &ids).answer.encoded().len(),
        size_of::<Outcome>(),
        size_of::<IdemEntry>(),
    );
    drop(table);

    // Beyond the bound, memory keeps only where the store has each answer. Swept as the
    // server does, often enough that the kept answers' table stays small next to n.
    let before = heap();
    let bound = (n / 100).max(1);
    let table = Idempotency::new(86_400_000, bound);
    for i in 0..n {
        let entry = deduct_entry(now_ms, &ids);
        let page = 1 + i as u64 / 1_000;
        entry.answer.written(page);
        table.written_through(page);
        table.insert(&idem_key(&account_id(i % 1_000), &seq.uuid()), entry);
        if i % bound == 0 {
            table.evict_over_bound();
        }
    }
    table.evict_over_bound();
    let (bytes, _, _) = heap().per(before, n);
    let kept = table.len() as f64 / n as f64;
    println!(
        "memory: evicted answer: {:.1} bytes/answer over {} answers ({bytes:.1} bytes/answer in all, with {} kept)",
        bytes - kept * kept_bytes,
        table.evicted_len(),
        table.len()
    );
    drop(table);
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(Result::ok).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn startup(n: usize) {
    let clock = Arc::new(SystemClock::new());
    let now = clock.now();
    let ids = IdGenerator::default();
    let mut seq = Seq(0x9e37_79b9_7f4a_7c15);
    let template = typical_account(0, now, &ids, &mut seq);
    let dir = tempfile::tempdir().expect("temp dir");

    // Write: large batches, one transaction each, ids in key order.
    let started = Instant::now();
    {
        let mut store = EmbeddedStore::open(dir.path(), Synchronous::Normal).expect("open store");
        const BATCH: usize = 20_000;
        let mut i = 0;
        while i < n {
            let end = (i + BATCH).min(n);
            let mut batch = Batch::default();
            batch.accounts.reserve(end - i);
            for j in i..end {
                let id = account_id(j);
                let mut state = template.clone();
                state.id = id.clone();
                batch.accounts.push((id, creditd::store::encode_account(&state)));
            }
            store.write(&mut batch).expect("write accounts");
            i = end;
        }
    }
    let wrote = started.elapsed();
    let on_disk = dir_size(dir.path());
    println!(
        "disk: wrote {n} typical accounts ({} bytes of state each) in {:.2} s; data directory {:.1} MB ({:.0} bytes/account)",
        creditd::store::encode_account(&template).len(),
        secs(wrote),
        on_disk as f64 / 1e6,
        on_disk as f64 / n as f64
    );

    // Let the kernel finish writing the data back first, so the start-up is timed on a
    // settled machine (not racing the write-back of what was just written).
    let t = Instant::now();
    let synced = std::process::Command::new("sync").status().is_ok_and(|s| s.success());
    if synced {
        println!("disk: sync took {:.2} s", secs(t.elapsed()));
    }

    // Twice: a fresh process (the heap must come from the kernel, page by page), then again
    // in the same process (the heap reuses what the first engine freed). The difference is
    // what obtaining fresh memory costs on this machine.
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let _in_runtime = runtime.enter(); // the journal delivers wake-ups there
    for run in ["1st start, heap mostly fresh from the kernel", "2nd start, heap reused"] {
        let before = heap();
        let (engine, writer, t) = start(dir.path(), clock.clone());
        assert_eq!(engine.account_count(), n);
        let (bytes, blocks, _) = heap().per(before, n);
        println!(
            "startup: ready in {:.2} s for {n} accounts [{run}] (open {:.3} s, restore {:.2} s [SQL read, facts, compress, cells], engine {:.2} s); heap after start-up {:.0} bytes/account ({:.1} blocks/account)",
            secs(t.ready),
            secs(t.opened),
            secs(t.restored - t.opened),
            secs(t.ready - t.restored),
            bytes,
            blocks,
        );
        let t1 = Instant::now();
        drop(engine);
        writer.join().expect("journal writer");
        println!("startup: teardown (drop {n} accounts, close store) {:.2} s", secs(t1.elapsed()));
    }
    drop(dir);
}

/// Cumulative times of the start-up steps.
struct StartTimes {
    opened: Duration,
    restored: Duration,
    ready: Duration,
}

/// Start-up, as `app::start` does it: open, restore, reader, journal, engine.
fn start(dir: &std::path::Path, clock: Arc<SystemClock>) -> (Engine, std::thread::JoinHandle<()>, StartTimes) {
    let t0 = Instant::now();
    let mut store = EmbeddedStore::open(dir, Synchronous::Normal).expect("open store");
    let opened = t0.elapsed();
    let idem = Arc::new(Idempotency::new(86_400_000, 5_000_000));
    let restored = Restored::from_store(&mut store, &idem, 0, clock.now()).expect("restore");
    let restored_at = t0.elapsed();
    let lookup: Arc<dyn RequestLookup> = Arc::new(EmbeddedStore::reader(dir).expect("reader"));
    let (journal, writer) = Journal::start(Box::new(store), idem.clone(), clock.clone(), JournalOptions::default());
    let engine = Engine::new(restored, journal, idem, Some(lookup), clock, EngineOptions::default());
    let ready = t0.elapsed();
    (engine, writer, StartTimes { opened, restored: restored_at, ready })
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: keep the test quick.
    let bench = std::env::args().any(|a| a == "--bench");
    let in_memory = if bench { 100_000 } else { 1_000 };
    let on_disk = std::env::var("FOOTPRINT_ACCOUNTS")
        .ok()
        .and_then(|v| v.replace('_', "").parse::<usize>().ok())
        .unwrap_or(if bench { 1_000_000 } else { 10_000 });
    let started = Instant::now();
    memory(in_memory);
    startup(on_disk);
    println!("footprint: done in {:.1} s, peak RSS {:.2} GB", secs(started.elapsed()), peak_rss_bytes() as f64 / 1e9);
}
