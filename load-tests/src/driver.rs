//! `creditd-load`: a load driver for creditd's hot path that gives every request its own
//! `request_id` and still costs little per call. Each request body is encoded once; per
//! call the driver only patches the id (and account) digits in place. It speaks just
//! enough HTTP/2 itself (see `h2wire`): constant pre-encoded request headers, and
//! responses judged without decoding headers (a gRPC unary answer that carries a message is
//! OK; an error is trailers-only), so one client core can keep one server core busy.
//!
//! ```text
//! creditd-load setup   --addr 127.0.0.1:50051 --accounts 100000
//! creditd-load run     --addr 127.0.0.1:50051 --scenario deduct --connections 4 --streams 25 --duration 10
//! creditd-load run     ... --rps 40000        (open loop: latency from the scheduled send time)
//! ```
//! Scenarios: `deduct` (one hot account), `deduct-spread` (accounts spread over
//! `--accounts`), `deny-mix` (5% of calls hit an account with no credits), `reserve-commit`
//! (a Reserve then a Commit per iteration), `batch100` (BatchCheckAndDeduct of 100 items for
//! one account, each call for another),
//! `dry-run` and `balance` (fixed bodies, for comparison with h2load).
//! Loopback only, bounded by `--duration`, stops by itself.

use clap::{Parser, Subcommand};
use creditd::proto::v1 as pb;
use prost::Message;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates the accounts and the price the scenarios use (idempotent).
    Setup {
        #[arg(long, default_value = "127.0.0.1:50051")]
        addr: SocketAddr,
        #[arg(long, default_value_t = 100_000)]
        accounts: u32,
    },
    /// Runs one scenario and prints one line of results (or JSON with --json).
    Run(RunArgs),
}

#[derive(Parser, Clone)]
struct RunArgs {
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: SocketAddr,
    #[arg(long, default_value = "deduct")]
    scenario: String,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 25)]
    streams: usize,
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Open loop at this many calls per second in total; 0 = closed loop.
    #[arg(long, default_value_t = 0)]
    rps: u64,
    #[arg(long, default_value_t = 100_000)]
    accounts: u32,
    /// Distinguishes request ids of separate runs against the same server.
    #[arg(long, default_value_t = 0)]
    run_id: u32,
    #[arg(long)]
    json: bool,
}

/// Account names have a fixed width so they can be patched in place.
fn spread_account(i: u32) -> String {
    format!("org-{i:06}")
}
const HOT_ACCOUNT: &str = "org-000000";
const BROKE_ACCOUNT: &str = "brk-000000";
const ID_DIGITS: usize = 18;

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    match cli.command {
        Command::Setup { addr, accounts } => runtime.block_on(setup(addr, accounts)),
        Command::Run(args) => {
            assert!(args.addr.ip().is_loopback(), "creditd-load targets loopback addresses only");
            let local = tokio::task::LocalSet::new();
            let report = local.block_on(&runtime, run(args.clone()));
            report.print(&args);
            if report.failed > 0 {
                std::process::exit(1);
            }
        }
    }
}

async fn setup(addr: SocketAddr, accounts: u32) {
    use creditd::proto::v1::admin_client::AdminClient;
    assert!(addr.ip().is_loopback(), "creditd-load targets loopback addresses only");
    let mut admin = AdminClient::connect(format!("http://{addr}")).await.expect("connect");
    let price = pb::PriceEntry {
        action: "chat".into(),
        category: "chat".into(),
        unit_name: "1k_tokens".into(),
        unit_size: 1000,
        credits_per_unit: "0.003".into(),
        meter: String::new(),
    };
    admin.upsert_prices(pb::UpsertPricesRequest { entries: vec![price], ..Default::default() }).await.expect("price");
    let mut names: Vec<String> = (0..accounts.max(1)).map(spread_account).collect();
    names.push(BROKE_ACCOUNT.into());
    let started = Instant::now();
    let mut in_flight = Vec::new();
    for chunk in names.chunks(names.len().div_ceil(16)) {
        let mut admin = admin.clone();
        let chunk = chunk.to_vec();
        in_flight.push(tokio::spawn(async move {
            for id in chunk {
                let create = pb::CreateAccountRequest {
                    request_id: format!("create-{id}"),
                    account_id: id.clone(),
                    ..Default::default()
                };
                match admin.create_account(create).await {
                    Ok(_) => {}
                    Err(s) if s.code() == tonic::Code::AlreadyExists => continue,
                    Err(s) => panic!("create {id}: {s}"),
                }
                if id != BROKE_ACCOUNT {
                    let grant = pb::GrantCreditsRequest {
                        request_id: format!("grant-{id}"),
                        account_id: id.clone(),
                        kind: pb::GrantKind::Purchase as i32,
                        amount: "1000000000000".into(),
                        ..Default::default()
                    };
                    admin.grant_credits(grant).await.expect("grant");
                }
            }
        }));
    }
    for t in in_flight {
        t.await.expect("setup task");
    }
    eprintln!(
        "setup: {} accounts and the price of `chat` ready in {:.1} s",
        names.len(),
        started.elapsed().as_secs_f64()
    );
}

/// A request body encoded once, with the byte ranges to patch per call.
#[derive(Clone)]
struct Template {
    path: &'static str,
    frame: Vec<u8>,
    /// Offsets of the request-id digit runs (one per item in a batch).
    ids: Vec<usize>,
    /// Offsets of the account digit runs, when the scenario spreads accounts.
    accounts: Vec<usize>,
}

impl Template {
    fn encode(path: &'static str, message: &impl Message, spread: bool) -> Template {
        let body = message.encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        let find = |needle: &[u8]| -> Vec<usize> {
            frame.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(i, _)| i).collect()
        };
        let ids = find(&[b'#'; ID_DIGITS]);
        let accounts = if spread { find(b"org-").into_iter().map(|i| i + 4).collect() } else { Vec::new() };
        Template { path, frame, ids, accounts }
    }

    /// Appends a copy with fresh ids (`base`, `base+1`, … per item) and, if spread, account.
    fn render_into(&self, out: &mut Vec<u8>, base: u64, account: u32) {
        let at0 = out.len();
        out.extend_from_slice(&self.frame);
        let buf = &mut out[at0..];
        for (n, &at) in self.ids.iter().enumerate() {
            write_digits(&mut buf[at..at + ID_DIGITS], base + n as u64);
        }
        for &at in &self.accounts {
            write_digits(&mut buf[at..at + 6], u64::from(account));
        }
    }
}

fn write_digits(out: &mut [u8], mut n: u64) {
    for b in out.iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

fn deduct(account: &str, dry_run: bool) -> pb::CheckAndDeductRequest {
    pb::CheckAndDeductRequest {
        request_id: if dry_run { String::new() } else { "#".repeat(ID_DIGITS) },
        account_id: account.into(),
        action: "chat".into(),
        quantity: 1500,
        dry_run,
        ..Default::default()
    }
}

/// What one iteration sends.
enum Plan {
    One(Template),
    /// `deny-mix`: every 20th call goes to the account without credits.
    Mix {
        ok: Template,
        broke: Template,
    },
    /// A Reserve, then a Commit of the reservation it returns.
    ReserveCommit,
}

fn plan(scenario: &str) -> (Plan, u64) {
    const DEDUCT: &str = "/creditd.v1.Metering/CheckAndDeduct";
    match scenario {
        "deduct" => (Plan::One(Template::encode(DEDUCT, &deduct(HOT_ACCOUNT, false), false)), 1),
        "deduct-spread" => (Plan::One(Template::encode(DEDUCT, &deduct(HOT_ACCOUNT, false), true)), 1),
        "deny-mix" => (
            Plan::Mix {
                ok: Template::encode(DEDUCT, &deduct(HOT_ACCOUNT, false), true),
                broke: Template::encode(DEDUCT, &deduct(BROKE_ACCOUNT, false), false),
            },
            1,
        ),
        "dry-run" => (Plan::One(Template::encode(DEDUCT, &deduct(HOT_ACCOUNT, true), false)), 1),
        "balance" => (
            Plan::One(Template::encode(
                "/creditd.v1.Metering/GetBalance",
                &pb::GetBalanceRequest { account_id: HOT_ACCOUNT.into() },
                false,
            )),
            1,
        ),
        "batch100" => {
            let items = (0..100).map(|_| deduct(HOT_ACCOUNT, false)).collect();
            (
                Plan::One(Template::encode(
                    "/creditd.v1.Metering/BatchCheckAndDeduct",
                    &pb::BatchCheckAndDeductRequest { items },
                    true,
                )),
                100,
            )
        }
        "reserve-commit" => (Plan::ReserveCommit, 1),
        other => panic!("unknown scenario {other:?}"),
    }
}

mod h2wire;

use h2wire::{Connection, Event};

#[derive(Default)]
struct Tally {
    calls: u64,
    failed: u64,
    denied: u64,
    latencies_us: Vec<u32>,
}

struct Report {
    /// Calls answered within the measured window.
    calls: u64,
    calls_per_s: f64,
    items_per_s: f64,
    failed: u64,
    denied: u64,
    p50: u32,
    p99: u32,
    p999: u32,
}

/// One call in flight on a stream.
struct InFlight {
    sent_at: Instant,
    /// Set for the first half of a Reserve→Commit pair.
    reserve_of: Option<u64>,
}

async fn run(args: RunArgs) -> Report {
    let (plan, items_per_call) = plan(&args.scenario);
    let plan = std::rc::Rc::new(plan);
    let start = Instant::now() + Duration::from_millis(300);
    let measure_from = start + Duration::from_secs(args.warmup);
    let end = measure_from + Duration::from_secs(args.duration);
    let per_connection_rps = args.rps as f64 / args.connections as f64;
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let (plan, args) = (plan.clone(), args.clone());
        let conn = Connection::open(args.addr).await.expect("connect to the server");
        tasks.push(tokio::task::spawn_local(async move {
            drive(conn, &plan, &args, c as u64, items_per_call, per_connection_rps, (start, measure_from, end)).await
        }));
    }
    let mut total = Tally::default();
    for t in tasks {
        let t = t.await.expect("connection task");
        total.calls += t.calls;
        total.failed += t.failed;
        total.denied += t.denied;
        total.latencies_us.extend(t.latencies_us);
    }
    total.latencies_us.sort_unstable();
    let n = total.latencies_us.len();
    let pct = |p: f64| total.latencies_us.get(((n as f64 * p) as usize).min(n.saturating_sub(1))).copied().unwrap_or(0);
    let seconds = args.duration as f64;
    Report {
        calls: total.calls,
        calls_per_s: total.calls as f64 / seconds,
        items_per_s: (total.calls * items_per_call) as f64 / seconds,
        failed: total.failed,
        denied: total.denied,
        p50: pct(0.50),
        p99: pct(0.99),
        p999: pct(0.999),
    }
}

/// Keeps `streams` calls in flight on one connection (closed loop), or sends on a fixed
/// schedule (open loop, latency counted from the scheduled time), until `end`.
async fn drive(
    mut conn: Connection,
    plan: &Plan,
    args: &RunArgs,
    connection: u64,
    items_per_call: u64,
    rps: f64,
    (start, measure_from, end): (Instant, Instant, Instant),
) -> Tally {
    let mut tally = Tally::default();
    let mut next_id = (u64::from(args.run_id) << 48) | (connection << 36);
    let mut iteration = connection.wrapping_mul(7919);
    let mut in_flight: std::collections::HashMap<u32, InFlight> = std::collections::HashMap::new();
    let interval = (rps > 0.0).then(|| Duration::from_secs_f64(1.0 / rps));
    // Open loop: calls due but not yet sent (all streams busy), by scheduled time.
    let mut due: std::collections::VecDeque<Instant> = std::collections::VecDeque::new();
    let mut next_tick = start;
    let mut body = Vec::with_capacity(64 * 1024);
    tokio::time::sleep_until(start.into()).await;
    loop {
        let now = Instant::now();
        // Start calls: closed loop fills every free stream; open loop sends what is due.
        if now < end {
            if let Some(i) = interval {
                while next_tick <= now && next_tick < end {
                    due.push_back(next_tick);
                    next_tick += i;
                }
            }
            while in_flight.len() < args.streams {
                let sent_at = match interval {
                    None => now,
                    Some(_) => match due.pop_front() {
                        Some(t) => t,
                        None => break,
                    },
                };
                let account = (iteration.wrapping_mul(2_654_435_761) % u64::from(args.accounts.max(1))) as u32;
                body.clear();
                let (path, reserve_of) = match plan {
                    Plan::One(t) => {
                        t.render_into(&mut body, next_id, account);
                        (t.path, None)
                    }
                    Plan::Mix { ok, broke } => {
                        let t = if iteration % 20 == 19 { broke } else { ok };
                        t.render_into(&mut body, next_id, account);
                        (t.path, None)
                    }
                    Plan::ReserveCommit => {
                        frame_into(&mut body, &reserve_request(next_id, account));
                        ("/creditd.v1.Metering/Reserve", Some(next_id))
                    }
                };
                let stream = conn.send(path, &body);
                in_flight.insert(stream, InFlight { sent_at, reserve_of });
                next_id += items_per_call.max(2);
                iteration += 1;
            }
        } else if in_flight.is_empty() {
            break;
        }
        conn.flush().await.expect("write to the server");
        let wake = if interval.is_some() && now < end {
            Some(next_tick.min(end))
        } else if now < end {
            Some(end)
        } else {
            None
        };
        let events = match conn.read(wake).await {
            Ok(events) => events,
            Err(e) => {
                eprintln!("connection {connection}: {e}");
                tally.failed += in_flight.len() as u64;
                break;
            }
        };
        for event in events {
            let (stream, message) = match event {
                Event::Done { stream, message } => (stream, message),
                Event::Failed { stream } => (stream, None),
            };
            let Some(call) = in_flight.remove(&stream) else { continue };
            // The second half of a Reserve→Commit pair goes out on a new stream.
            if let (Some(id), Some(m)) = (call.reserve_of, &message) {
                if let Ok(reply) = pb::ReserveResponse::decode(&m[..]) {
                    if reply.decision == pb::Decision::Allowed as i32 {
                        body.clear();
                        let commit = pb::CommitRequest {
                            request_id: format!("c{id}"),
                            reservation_id: reply.reservation_id,
                            quantity: 1500,
                            r#final: true,
                            ..Default::default()
                        };
                        frame_into(&mut body, &commit);
                        let s = conn.send("/creditd.v1.Metering/Commit", &body);
                        in_flight.insert(s, InFlight { sent_at: call.sent_at, reserve_of: None });
                        continue;
                    }
                }
            }
            let done = Instant::now();
            if call.sent_at >= measure_from && call.sent_at < end {
                tally.calls += 1;
                match message {
                    // decision is field 1 (varint): `08 02` = DECISION_DENIED
                    Some(m) => {
                        tally.denied += u64::from(m.len() >= 2 && m[0] == 0x08 && m[1] == pb::Decision::Denied as u8)
                    }
                    None => tally.failed += 1,
                }
                tally.latencies_us.push(done.duration_since(call.sent_at).as_micros().min(u128::from(u32::MAX)) as u32);
            }
        }
    }
    tally
}

fn reserve_request(id: u64, account: u32) -> pb::ReserveRequest {
    pb::ReserveRequest {
        request_id: format!("r{id}"),
        account_id: spread_account(account),
        action: "chat".into(),
        quantity: 2000,
        ttl_seconds: 60,
        ..Default::default()
    }
}

/// Appends a gRPC length-prefixed frame of `message`.
fn frame_into(out: &mut Vec<u8>, message: &impl Message) {
    out.push(0);
    out.extend_from_slice(&(message.encoded_len() as u32).to_be_bytes());
    message.encode(out).expect("a Vec grows");
}

impl Report {
    fn print(&self, args: &RunArgs) {
        if args.json {
            println!(
                "{{\"scenario\":\"{}\",\"calls\":{},\"calls_per_s\":{:.0},\"items_per_s\":{:.0},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"failed\":{},\"denied\":{},\"rps\":{}}}",
                args.scenario, self.calls, self.calls_per_s, self.items_per_s, self.p50, self.p99, self.p999, self.failed, self.denied, args.rps
            );
        } else {
            println!(
                "{:<15} {:>10.0} calls/s {:>11.0} items/s  p50 {:>6} µs  p99 {:>6} µs  p999 {:>6} µs  failed {}  denied {}",
                args.scenario, self.calls_per_s, self.items_per_s, self.p50, self.p99, self.p999, self.failed, self.denied
            );
        }
    }
}
