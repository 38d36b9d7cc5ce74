//! Operating creditd: the command line against a running server, async durability,
//! answers evicted from memory, and the periodic cycle sweep.

use crate::helpers::*;
use std::process::Command;
use std::time::Duration;

fn cli(server: &TestServer, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_creditd"))
        .args(args)
        .env("CREDITD_SERVER", format!("http://{}", server.running.as_ref().unwrap().addr))
        .output()
        .expect("run creditd");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_walkthrough_works() {
    let s = TestServer::start().await;
    let steps: &[&[&str]] = &[
        &[
            "account",
            "create",
            "acme",
            "--name",
            "Acme",
            "--plan",
            "pro",
            "--plan-credits",
            "1000",
            "--spending-cap",
            "5000",
        ],
        &[
            "price",
            "set",
            "chat.gpt-4o",
            "0.003",
            "--unit-size",
            "1000",
            "--unit-name",
            "1k_tokens",
            "--category",
            "chat",
            "--meter",
            "ai_tokens",
        ],
        &["grant", "acme", "500", "--paid", "20.00 EUR", "--reference", "inv-1001"],
        &["limits", "acme", "--spending-cap", "5000", "--alert", "4000", "--meter", "ai_tokens:counter:200000000"],
    ];
    for args in steps {
        let (ok, out, err) = cli(&s, args);
        assert!(ok, "{args:?} failed: {out}{err}");
    }
    let (ok, out, _) = cli(&s, &["deduct", "acme", "chat.gpt-4o", "1500", "--user", "alice", "--meta", "model=gpt-4o"]);
    assert!(ok);
    assert!(out.contains("allowed: 0.0045 credits"), "{out}");
    let (_, out, _) = cli(&s, &["deduct", "acme", "video", "1"]);
    assert!(out.contains("denied: DENIAL_REASON_UNKNOWN_ACTION"), "{out}");
    let (_, out, _) = cli(&s, &["account", "show", "acme"]);
    assert!(out.contains("balance:      1499.9955"), "{out}");
    assert!(out.contains("meter ai_tokens: 1500 of 200000000"), "{out}");
    let (_, out, _) = cli(&s, &["price", "list"]);
    assert!(out.contains("chat.gpt-4o") && out.contains("0.003"), "{out}");
    assert_eq!(s.balance("acme").await.balance, "1499.9955");

    // Errors are clear and exit non-zero.
    let (ok, _, err) = cli(&s, &["grant", "acme", "1e5"]);
    assert!(!ok);
    assert!(err.contains("InvalidArgument") && err.contains("amount"), "{err}");
    let (ok, _, err) = cli(&s, &["balance", "acme", "--server", "http://127.0.0.1:1"]);
    assert!(!ok);
    assert!(err.contains("cannot reach creditd"), "{err}");
}

#[test]
fn config_check_validates_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[store]\ndurability = \"async\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_creditd")).args(["config", "check"]).arg(&good).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("durability = \"async\""));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nlisten = \"0.0.0.0:50051\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_creditd")).args(["config", "check"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

#[tokio::test]
async fn async_durability_answers_from_memory_and_still_persists() {
    let s = TestServer::start_with(|c| {
        c.store.durability = creditd::journal::Durability::Async;
        c.store.flush_interval_ms = 5;
    })
    .await;
    s.account_with("acme", "10").await;
    s.price("op", "1", 1).await;
    let req = deduct_request("acme", "op", 3);
    assert!(allowed(&s.deduct_req(req.clone()).await.unwrap()));
    let s = s.restart().await;
    assert_eq!(s.balance("acme").await.balance, "7");
    assert!(s.deduct_req(req).await.unwrap().replayed);
}

#[tokio::test]
async fn answers_evicted_from_memory_are_found_in_the_store() {
    let s = TestServer::start_with(|c| c.limits.idempotency_max_entries = 2).await;
    s.account_with("acme", "100").await;
    s.price("op", "1", 1).await;
    let first = deduct_request("acme", "op", 1);
    let answer = s.deduct_req(first.clone()).await.unwrap();
    for _ in 0..5 {
        s.deduct("acme", "op", 1).await;
    }
    let engine = s.running.as_ref().unwrap().engine.clone();
    engine.flush().await.unwrap();
    assert!(engine.evict_answers() > 0, "the memory bound evicted answers");
    let again = s.deduct_req(first.clone()).await.unwrap();
    assert!(again.replayed, "the evicted answer came back from the store");
    assert_eq!(again.ledger_entry_id, answer.ledger_entry_id);
    let mut other_arguments = first.clone();
    other_arguments.quantity = 2;
    let reused = s.deduct_req(other_arguments).await.expect_err("an evicted id reused with other arguments");
    assert_eq!(reused.code(), tonic::Code::AlreadyExists, "{reused:?}");
    assert_eq!(s.balance("acme").await.balance, "94");

    // After a restart only the newest answers are taken back into memory; the rest are
    // read from the store when asked for, and never charged twice.
    let s = s.restart().await;
    let engine = s.running.as_ref().unwrap().engine.clone();
    engine.flush().await.unwrap();
    let again = s.deduct_req(first).await.unwrap();
    assert!(again.replayed && again.ledger_entry_id == answer.ledger_entry_id);
    assert!(allowed(&s.deduct("acme", "op", 1).await), "a new id is charged");
    assert_eq!(s.balance("acme").await.balance, "93");
}

#[tokio::test]
async fn the_cycle_sweep_renews_idle_accounts() {
    let s = TestServer::start_with(|c| c.sweep.cycles_interval_ms = 20).await;
    s.account_on_plan("idle", "10").await;
    s.advance(Duration::from_secs(9 * 24 * 3600));
    for _ in 0..300 {
        let renewed =
            s.ledger().iter().filter(|e| e.metadata.get("reason").is_some_and(|r| r == "plan_renewed")).count();
        if renewed == 2 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the sweep did not renew the plan of an idle account");
}
