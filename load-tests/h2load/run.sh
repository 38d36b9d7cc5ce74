#!/usr/bin/env bash
# h2load against creditd's Metering service on a LOOPBACK address, with a fixed gRPC body.
#
#   load-tests/h2load/run.sh SCENARIO ADDR [extra h2load args]
#
#   SCENARIO  dryrun    CheckAndDeduct, dry_run=true (full check and pricing, no write)
#             balance   GetBalance
#             replay    CheckAndDeduct with one fixed request_id: the first call deducts,
#                       every later call is an idempotent replay (replayed = true)
#             batch100  BatchCheckAndDeduct of 100 items with distinct ids: the first call
#                       deducts 100 times, every later call replays all 100 (h2load resends
#                       the same body), so this measures the batch replay path
#   ADDR      127.x.x.x:PORT, [::1]:PORT or localhost:PORT (anything else is refused)
#
# Defaults: -c 4 -m 25 -t 1 -D 10 --warm-up-time 2 (100 streams in flight, closed loop).
# Extra args come after the defaults, so they win: e.g. `-D 3 --warm-up-time 1`, or for
# open-loop latency `-c 16 -m 1 --rps 2500` (--rps is per client; keep -m 1, see
# shared/research/perf.md 2.3).
#
# Environment:
#   ACCOUNT (acme), ACTION (chat), QUANTITY (1500)   what the body asks for
#   H2LOAD_CPU=1        run h2load under `taskset -c 1` (pin the server elsewhere)
#   PERCENTILES=0       skip --log-file and the p50/p90/p99 summary (the log costs a little
#                       client CPU: about 25 bytes written per request)
#   SPOT_CHECK=0        skip the nghttp call that shows grpc-status and the decoded answer
#   MAX_SECONDS=N       hard cap on h2load's wall time (default: warm-up + duration + 30)
#
# What must exist first: account $ACCOUNT with credits and a price for $ACTION, e.g.
#   creditd account create acme && creditd grant acme 1000000 &&
#   creditd price set chat 0.003 --unit-size 1000        (CREDITD_SERVER=http://ADDR)
#
# h2load counts every HTTP 200 as a success and never reads the grpc-status trailer: an
# error answer (NOT_FOUND, INVALID_ARGUMENT, ALREADY_EXISTS...) is a "succeeded" request
# too. The spot check below (nghttp -v) shows the grpc-status of one call before the run.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
frames="$here/frames.py"

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[ $# -ge 2 ] || usage
scenario=$1
addr=$2
shift 2
extra=("$@")

# --- loopback only ------------------------------------------------------------------------
case "$addr" in
    127.*:[0-9]* | localhost:[0-9]* | '[::1]':[0-9]*) ;;
    *)
        echo "error: ADDR must be a loopback HOST:PORT (127.x.x.x:PORT, [::1]:PORT or localhost:PORT), got '$addr'" >&2
        exit 2
        ;;
esac
host=${addr%:*}
port=${addr##*:}
if ! [[ $port =~ ^[0-9]+$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
    echo "error: bad port in '$addr'" >&2
    exit 2
fi
if [[ $host == 127.* ]] && ! [[ $host =~ ^127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]]; then
    echo "error: '$host' is not an IPv4 address in 127.0.0.0/8" >&2
    exit 2
fi
# Extra args must not point h2load somewhere else.
for a in "${extra[@]+"${extra[@]}"}"; do
    case "$a" in
        *://* | -i | -i* | --input-file* | -B | -B* | --base-uri* | --connect-to* | --timing-script-file*)
            echo "error: extra argument '$a' could send requests elsewhere; not allowed here" >&2
            exit 2
            ;;
    esac
done

# --- tools ------------------------------------------------------------------------------------
command -v h2load >/dev/null || {
    echo "error: h2load not found (apt-get install nghttp2-client)" >&2
    exit 1
}
command -v python3 >/dev/null || {
    echo "error: python3 not found (frames.py needs it)" >&2
    exit 1
}

account=${ACCOUNT:-acme}
action=${ACTION:-chat}
quantity=${QUANTITY:-1500}
run_id="$(date +%s)-$$"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/creditd-h2load.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
body="$tmp/body.bin"

case "$scenario" in
    dryrun)
        method=CheckAndDeduct
        python3 "$frames" dryrun --account "$account" --action "$action" --quantity "$quantity" >"$body"
        answer_type=CheckAndDeductResponse
        ;;
    balance)
        method=GetBalance
        python3 "$frames" balance --account "$account" >"$body"
        answer_type=GetBalanceResponse
        ;;
    replay)
        method=CheckAndDeduct
        python3 "$frames" replay --account "$account" --action "$action" --quantity "$quantity" \
            --request-id "h2load-replay-$run_id" >"$body"
        answer_type=CheckAndDeductResponse
        ;;
    batch100)
        method=BatchCheckAndDeduct
        python3 "$frames" batch --account "$account" --action "$action" --quantity "$quantity" \
            --items 100 --prefix "h2load-batch-$run_id" >"$body"
        answer_type=BatchCheckAndDeductResponse
        ;;
    *)
        echo "error: unknown scenario '$scenario' (dryrun | balance | replay | batch100)" >&2
        exit 2
        ;;
esac
url="http://$addr/creditd.v1.Metering/$method"

# --- time bound -------------------------------------------------------------------------------
# Seconds in an h2load <DURATION> (integer with optional h, m, s or ms unit).
seconds() {
    local v=$1
    case "$v" in
        *ms) echo $(((${v%ms} + 999) / 1000)) ;;
        *h) echo $((${v%h} * 3600)) ;;
        *m) echo $((${v%m} * 60)) ;;
        *s) echo "${v%s}" ;;
        *) echo "$v" ;;
    esac
}
duration=10
warmup=2
i=0
n=${#extra[@]}
while [ $i -lt "$n" ]; do
    a=${extra[$i]}
    next=""
    if [ $((i + 1)) -lt "$n" ]; then next=${extra[$((i + 1))]}; fi
    case "$a" in
        -D) duration=$next ;;
        -D*) duration=${a#-D} ;;
        --duration=*) duration=${a#--duration=} ;;
        --duration) duration=$next ;;
        --warm-up-time=*) warmup=${a#--warm-up-time=} ;;
        --warm-up-time) warmup=$next ;;
    esac
    i=$((i + 1))
done
if ! [[ $duration =~ ^[0-9]+(ms|s|m|h)?$ && $warmup =~ ^[0-9]+(ms|s|m|h)?$ ]]; then
    echo "error: cannot read the duration ('$duration') or warm-up time ('$warmup')" >&2
    exit 2
fi
max_seconds=${MAX_SECONDS:-$(($(seconds "$warmup") + $(seconds "$duration") + 30))}

# --- spot check: one call, its grpc-status and decoded answer ----------------------------------
headers=(-H 'content-type: application/grpc' -H 'te: trailers')
if [ "${SPOT_CHECK:-1}" != 0 ] && command -v nghttp >/dev/null; then
    echo "== spot check (nghttp, one call; for replay/batch100 this is the call that deducts)"
    if timeout 10 nghttp -v "${headers[@]}" -d "$body" "$url" >"$tmp/spot.txt" 2>&1; then
        grep -a -E ':status:|grpc-status:|grpc-message:' "$tmp/spot.txt" | sed 's/^\[[^]]*\] recv ([^)]*) /   /' || true
        # A second call without -v gives the bare body to decode.
        if timeout 10 nghttp "${headers[@]}" -d "$body" "$url" >"$tmp/answer.bin" 2>/dev/null && [ -s "$tmp/answer.bin" ]; then
            echo "   answer to a second identical call:"
            python3 "$frames" decode --as "$answer_type" <"$tmp/answer.bin" | cut -c1-400 | sed 's/^/   /' || true
        fi
        if ! grep -a -q 'grpc-status: 0' "$tmp/spot.txt"; then
            echo "WARNING: the spot-check call did not end with grpc-status 0; h2load will still report its answers as succeeded." >&2
        fi
    else
        echo "WARNING: nghttp could not reach $url:" >&2
        tail -3 "$tmp/spot.txt" >&2 || true
    fi
fi

# --- the run -----------------------------------------------------------------------------------
args=(-c 4 -m 25 -t 1 -D 10 --warm-up-time 2 "${headers[@]}" -d "$body")
if [ "${PERCENTILES:-1}" != 0 ]; then args+=(--log-file "$tmp/requests.log"); fi
args+=("${extra[@]+"${extra[@]}"}" "$url")
pin=()
if [ -n "${H2LOAD_CPU:-}" ]; then pin=(taskset -c "$H2LOAD_CPU"); fi

echo "== $scenario: $(wc -c <"$body") byte body -> $url (at most ${max_seconds}s)"
echo "   h2load ${args[*]}"
set +e
timeout --kill-after=5 "$max_seconds" "${pin[@]+"${pin[@]}"}" h2load "${args[@]}"
rc=$?
set -e
if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "error: h2load was stopped after ${max_seconds}s (MAX_SECONDS)" >&2
fi

if [ "${PERCENTILES:-1}" != 0 ] && [ -s "$tmp/requests.log" ]; then
    python3 - "$tmp/requests.log" <<'EOF'
import sys
# Columns: start time (us since epoch), HTTP status (-1: stream failed; 0 seen for streams
# still open when the run stopped), microseconds until the end of the response.
lat = []
other = {}
with open(sys.argv[1]) as f:
    for line in f:
        cols = line.rstrip("\n").split("\t")
        if len(cols) < 3:
            continue
        if cols[1] == "200":
            lat.append(int(cols[2]))
        else:
            other[cols[1]] = other.get(cols[1], 0) + 1
lat.sort()
def q(p):
    return lat[min(len(lat) - 1, int(p * len(lat)))]
if lat:
    print("== latency of the %d HTTP 200 answers in --log-file: p50 %d us, p90 %d us, p99 %d us, p99.9 %d us, max %d us"
          % (len(lat), q(0.50), q(0.90), q(0.99), q(0.999), lat[-1]))
if other:
    print("   rows without an HTTP 200 (0 or -1: no complete answer, e.g. cut off when the run stopped): %s"
          % ", ".join("%s: %d" % kv for kv in sorted(other.items())))
EOF
fi

cat <<EOF
== reminder: h2load counts HTTP 200 as success and does not read grpc-status. An error answer
   (NOT_FOUND, ALREADY_EXISTS, INVALID_ARGUMENT...) is still "succeeded" above. Spot-check with:
   nghttp -v -H 'content-type: application/grpc' -H 'te: trailers' -d BODY $url | grep grpc-
EOF
exit $rc
