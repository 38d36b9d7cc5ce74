#!/usr/bin/env bash
# Instructions per call, counted by callgrind: the same loads as run.sh against the bare
# baseline and creditd, with a table of user-space instructions per call, the ratio to the
# baseline, and what creditd's own parts (the request path, the journal writer) cost per call.
#
#   load-tests/callgrind.sh                      # deduct and batch100, about 3 minutes
#   SCENARIOS=deduct-spread load-tests/callgrind.sh
#
# Counts repeat to within a percent or two from run to run, whatever else the machine is
# doing, so two builds compare here where timed runs on a shared host do not. They leave out
# what the kernel does for the process (socket I/O, the fsync of a sync commit) and what
# memory stalls cost, so a ratio here is an upper bound on the timed one; see README.
#
# Environment: SCENARIOS (deduct batch100), TARGETS (baseline creditd-sync creditd-async),
# DURATION (10 s of load per cell), CONNECTIONS (1), STREAMS (8), ACCOUNTS (100), KEEP (a
# directory to keep the callgrind files in, for callgrind_annotate), BIN (the binaries to
# count, target/release by default: a copy of an earlier build compares two). Loopback only; every
# server is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SCENARIOS=${SCENARIOS:-"deduct batch100"}
TARGETS=${TARGETS:-"baseline creditd-sync creditd-async"}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-1}
STREAMS=${STREAMS:-8}
ACCOUNTS=${ACCOUNTS:-100}

command -v valgrind >/dev/null && command -v callgrind_control >/dev/null ||
  { echo "needs valgrind (Debian package valgrind)" >&2; exit 1; }
cargo build --release --bins --quiet
bin=${BIN:-target/release}
work=$(mktemp -d)
out=${KEEP:-$work/callgrind}
mkdir -p "$out"
pid=
cleanup() {
  [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

source load-tests/wait_port.sh

# One cell: start the target under callgrind, set it up, zero the counts, drive the load,
# dump the counts, stop. The driver's JSON line goes to $work/line; the counts to $out/$1-$2.*.
cell() { # target scenario port
  local cmd
  case $1 in
    baseline) cmd=("$bin/creditd-baseline" --listen "127.0.0.1:$3" --runtime current_thread) ;;
    creditd-sync) cmd=("$bin/creditd" serve --listen "127.0.0.1:$3" --data-dir "$work/$1-$2" --durability sync) ;;
    creditd-async) cmd=("$bin/creditd" serve --listen "127.0.0.1:$3" --data-dir "$work/$1-$2" --durability async) ;;
    *) echo "unknown target $1" >&2; exit 1 ;;
  esac
  valgrind --tool=callgrind --callgrind-out-file="$out/$1-$2.%p" "${cmd[@]}" 2>"$work/$1-$2.log" &
  pid=$!
  # Under valgrind the server takes seconds to start.
  wait_port "$3" 120
  if [[ $1 != baseline ]]; then
    "$bin/creditd-load" setup --addr "127.0.0.1:$3" --accounts "$ACCOUNTS" >/dev/null
  fi
  callgrind_control -z "$pid" >/dev/null 2>&1
  "$bin/creditd-load" run --addr "127.0.0.1:$3" --scenario "$2" --duration "$DURATION" --warmup 0 \
    --connections "$CONNECTIONS" --streams "$STREAMS" --accounts "$ACCOUNTS" --run-id "$3" --json >"$work/line"
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=
}

results="$work/results.jsonl"
port=50460
for scenario in $SCENARIOS; do
  for target in $TARGETS; do
    port=$((port + 1))
    cell "$target" "$scenario" "$port"
    line=$(cat "$work/line")
    dump=$(ls "$out/$target-$scenario".*.1)
    echo "{\"target\":\"$target\",\"dump\":\"$dump\",\"result\":$line}" >>"$results"
    echo "$target $scenario: $line" >&2
  done
done

python3 - "$results" <<'PY'
import json, re, subprocess, sys

# Inclusive counts of these, per call: creditd's request path (the handler of each RPC the
# scenarios use) and its journal writer. The rest is gRPC, HTTP/2 and the runtime, which
# the baseline pays as well.
PARTS = {
    "handler": re.compile(r"creditd::api::metering::MeteringService as creditd::proto::v1::metering_server::Metering>::\w+::\{\{closure\}\}"),
    "writer": re.compile(r"creditd::journal::Writer::run\b"),
}

def counts(dump):
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", dump],
                          capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text).group(1).replace(",", ""))
    parts = dict.fromkeys(PARTS, 0)
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \([\d. ]+%\)\s+\S*?:(.*)", line)
        if m:
            for name, pattern in PARTS.items():
                if pattern.search(m.group(2)):
                    parts[name] += int(m.group(1).replace(",", ""))
    return total, parts

rows = [json.loads(l) for l in open(sys.argv[1])]
per_call = {}
print()
print(f"{'target':<15} {'scenario':<15} {'calls':>7} {'instr/call':>11} {'handler':>9} {'writer':>8} {'× baseline':>10}")
for r in rows:
    res = r["result"]
    calls = res["calls"]
    total, parts = counts(r["dump"])
    per_call[(r["target"], res["scenario"])] = total / calls
    base = per_call.get(("baseline", res["scenario"]))
    # Fewer instructions per call is more calls per second: the ratio is baseline / target.
    ratio = f"{base / (total / calls):.2f}" if base else "-"
    print(f"{r['target']:<15} {res['scenario']:<15} {calls:>7} {total / calls:>11.0f} "
          f"{parts['handler'] / calls:>9.0f} {parts['writer'] / calls:>8.0f} {ratio:>10}")
PY
