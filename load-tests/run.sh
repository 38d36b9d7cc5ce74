#!/usr/bin/env bash
# Builds in release mode, starts the bare baseline and creditd (embedded store, sync and
# async durability), drives the same loads against each with creditd-load, and prints a
# table: calls/s, items/s, p50/p99/p999 and the ratio to the baseline, closed loop and open
# loop at 50% of each server's own maximum (and the baseline at that same rate), each the
# median of RUNS runs; then how long the disk takes to make a small write durable.
#
#   load-tests/run.sh                 # full run (about 10 minutes)
#   QUICK=1 load-tests/run.sh         # 1 run of 3 s per cell, 10k accounts
#
# Environment: SERVER_CPU (0), LOAD_CPU (1), RUNS (3), DURATION (8), WARMUP (2),
# ACCOUNTS (100000), SCENARIOS, TARGETS (also creditd-sync-normal), RUNTIME (current_thread |
# multi_thread, for every server alike). Loopback only; every server is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
if [[ -n "${QUICK:-}" ]]; then RUNS=${RUNS:-1}; DURATION=${DURATION:-3}; WARMUP=${WARMUP:-1}; ACCOUNTS=${ACCOUNTS:-10000}; fi
RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
ACCOUNTS=${ACCOUNTS:-100000}
SCENARIOS=${SCENARIOS:-"deduct deduct-spread deny-mix reserve-commit batch100"}
TARGETS=${TARGETS:-"baseline creditd-sync creditd-async"}
RUNTIME=${RUNTIME:-current_thread}

cargo build --release --bins --quiet
bin=target/release
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

source load-tests/wait_port.sh

start() { # name port
  case $1 in
    # Same runtime flavour as creditd's default, so the ratio compares like with like.
    baseline) taskset -c "$SERVER_CPU" "$bin/creditd-baseline" --listen "127.0.0.1:$2" --runtime "$RUNTIME" 2>"$work/$1.log" & ;;
    creditd-sync) taskset -c "$SERVER_CPU" "$bin/creditd" serve --listen "127.0.0.1:$2" --data-dir "$work/$1-$2" \
      --durability sync --set "server.runtime=$RUNTIME" --log-format json 2>"$work/$1.log" & ;;
    # Sync durability without an fsync per group commit (survives a process crash, not a
    # power loss): not run by default; beside creditd-sync it shows what the fsync costs.
    creditd-sync-normal) taskset -c "$SERVER_CPU" "$bin/creditd" serve --listen "127.0.0.1:$2" --data-dir "$work/$1-$2" \
      --durability sync --set store.sqlite_synchronous=normal --set "server.runtime=$RUNTIME" --log-format json 2>"$work/$1.log" & ;;
    creditd-async) taskset -c "$SERVER_CPU" "$bin/creditd" serve --listen "127.0.0.1:$2" --data-dir "$work/$1-$2" \
      --durability async --set "server.runtime=$RUNTIME" --log-format json 2>"$work/$1.log" & ;;
    *) echo "unknown target $1" >&2; exit 1 ;;
  esac
  pids+=($!)
  wait_port "$2" 10
  if [[ $1 != baseline ]]; then
    "$bin/creditd-load" setup --addr "127.0.0.1:$2" --accounts "$ACCOUNTS"
  fi
}

stop() { # the server started last
  kill "${pids[-1]}" 2>/dev/null || true
  wait "${pids[-1]}" 2>/dev/null || true
  unset 'pids[-1]'
}

record() { # target mode run json-line
  if [[ -n $4 ]]; then
    echo "{\"target\":\"$1\",\"mode\":\"$2\",\"run\":$3,\"result\":$4}" >>"$results"
  fi
}

# The disk's own floor under sync durability: every sync answer waits for at least one fsync
# of the store's write-ahead log, so no p99 there can beat the disk's. Timed here as the
# journal writer meets it: small appends to a file in the same filesystem, each made durable.
disk=$(python3 - "$work" <<'PY'
import os, sys, time
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
block, times = os.urandom(8192), []
for _ in range(1000):
    os.write(fd, block)
    t = time.perf_counter()
    os.fdatasync(fd)
    times.append((time.perf_counter() - t) * 1e6)
os.close(fd)
os.unlink(path)
times.sort()
pct = lambda p: int(times[min(int(len(times) * p), len(times) - 1)])
print(f"disk: fdatasync of an 8 KiB append, 1000 times: p50 {pct(0.5)} µs, p99 {pct(0.99)} µs, max {int(times[-1])} µs")
PY
)
echo "$disk" >&2

open_run() { # label port rate run
  run_id=$((run_id + 1))
  local line
  line=$(taskset -c "$LOAD_CPU" "$bin/creditd-load" run --addr "127.0.0.1:$2" --scenario deduct \
    --connections 16 --streams 4 --rps "$3" --duration "$DURATION" --warmup "$WARMUP" \
    --accounts "$ACCOUNTS" --run-id "$run_id" --json) || true
  record "$1" open "$4" "$line"
  echo "$1 open loop at $3/s run $4: $line" >&2
}

results="$work/results.jsonl"
run_id=1
port=50160
for target in $TARGETS; do
  # Every scenario starts from a fresh server, so no cell pays for what an earlier one left
  # behind (answers kept for idempotency, a grown store) and the order does not matter.
  for scenario in $SCENARIOS; do
    port=$((port + 1))
    start "$target" "$port"
    for run in $(seq 1 "$RUNS"); do
      run_id=$((run_id + 1))
      line=$(taskset -c "$LOAD_CPU" "$bin/creditd-load" run --addr "127.0.0.1:$port" --scenario "$scenario" \
        --duration "$DURATION" --warmup "$WARMUP" --accounts "$ACCOUNTS" --run-id "$run_id" --json) || true
      record "$target" closed "$run" "$line"
      echo "$target $scenario run $run: $line" >&2
    done
    stop
  done
  # Open loop at half of this server's own median maximum for unary CheckAndDeduct.
  max=$(python3 - "$results" "$target" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rates = [r["result"]["calls_per_s"] for r in rows if r["target"] == sys.argv[2] and r["mode"] == "closed" and r["result"]["scenario"] == "deduct"]
print(int(statistics.median(rates)) if rates else 0)
PY
)
  if [[ $max -gt 0 ]]; then
    rate=$((max / 2))
    port=$((port + 1))
    start "$target" "$port"
    target_port=$port
    # The bare server at the same rate, its runs alternating with the target's: the host's
    # own tail at that rate and moment, which no server on it can beat.
    if [[ $target != baseline ]]; then
      port=$((port + 1))
      start baseline "$port"
    fi
    for run in $(seq 1 "$RUNS"); do
      open_run "$target" "$target_port" "$rate" "$run"
      if [[ $target != baseline ]]; then open_run "baseline@$target" "$port" "$rate" "$run"; fi
    done
    if [[ $target != baseline ]]; then stop; fi
    stop
  fi
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def median_run(target, scenario, mode):
    runs = [r["result"] for r in rows if r["target"] == target and r["mode"] == mode and r["result"]["scenario"] == scenario]
    if not runs:
        return None
    # Closed loop: the median throughput. Open loop runs at one rate: the median tail.
    runs.sort(key=lambda r: r["calls_per_s"] if mode == "closed" else r["p99_us"])
    return runs[len(runs) // 2]
targets = list(dict.fromkeys(r["target"] for r in rows))
scenarios = list(dict.fromkeys(r["result"]["scenario"] for r in rows if r["mode"] == "closed"))
print()
print(f"{'target':<22} {'scenario':<15} {'mode':<6} {'calls/s':>10} {'items/s':>11} {'p50 µs':>8} {'p99 µs':>8} {'p999 µs':>8} {'× baseline':>10} {'failed':>7}")
for t in targets:
    for mode, names in (("closed", scenarios), ("open", ["deduct"])):
        for s in names:
            r = median_run(t, s, mode)
            if r is None:
                continue
            base = median_run("baseline", s, "closed")
            ratio = f"{r['calls_per_s'] / base['calls_per_s']:.2f}" if base and mode == "closed" and base["calls_per_s"] else "-"
            print(f"{t:<22} {s:<15} {mode:<6} {r['calls_per_s']:>10.0f} {r['items_per_s']:>11.0f} {r['p50_us']:>8} {r['p99_us']:>8} {r['p999_us']:>8} {ratio:>10} {r['failed']:>7}")
PY
echo
echo "$disk"
