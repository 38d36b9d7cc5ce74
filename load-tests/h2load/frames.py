#!/usr/bin/env python3
"""Write a gRPC request body for h2load: a 5-byte length prefix + a hand-encoded protobuf.

h2load sends the same bytes as the body of every request (`h2load -d FILE`), so one file is
one call's worth of request. Dependency-free (standard library only), Python 3.8+.

    frames.py dryrun  --account acme --action chat --quantity 1500 > body.bin
    frames.py balance --account acme > body.bin
    frames.py replay  --account acme --action chat --quantity 1500 --request-id r-1 > body.bin
    frames.py batch   --account acme --action chat --quantity 1500 --items 100 --prefix b-1 > body.bin
    frames.py selftest                    # encode every scenario, decode it back, compare
    frames.py decode [--as TYPE] < resp   # dump a gRPC body (e.g. a response saved by nghttp)

Scenarios and the RPC each body is for (POST http://ADDR/creditd.v1.Metering/<Method>):

  dryrun   CheckAndDeduct{account_id, action, quantity, dry_run=true}. No request_id (a dry run
           needs none and changes nothing), so every call does the full check and pricing.
  balance  GetBalance{account_id}.
  replay   CheckAndDeduct{request_id=FIXED, account_id, action, quantity}. The first call
           deducts for real; every later call with the same body is an idempotent replay
           (the stored answer, `replayed = true`). If the id was already used with other
           arguments the server answers ALREADY_EXISTS, which h2load still counts as a
           success (HTTP 200): use a fresh --request-id per run (run.sh does).
  batch    BatchCheckAndDeduct{items: N x CheckAndDeduct}, item i has request_id
           "<prefix>-<i>". h2load resends the same body, so only the FIRST call deducts;
           every later call replays all N items. This measures the batch replay path, not
           N fresh deductions per call (for that use ghz batch_100.json or the Rust loadgen).

Field numbers follow proto/creditd/v1/metering.proto (package creditd.v1).
"""

import argparse
import struct
import sys

# --- encoding --------------------------------------------------------------------------

WT_VARINT = 0
WT_LEN = 2


def varint(n):
    if n < 0:
        raise ValueError("negative varint: %d" % n)
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(field, wire_type):
    return varint((field << 3) | wire_type)


def f_string(field, value):
    """A string field; proto3 omits empty strings."""
    if value == "":
        return b""
    data = value.encode("utf-8")
    return key(field, WT_LEN) + varint(len(data)) + data


def f_bytes(field, data):
    """A length-delimited field holding an embedded message (always written, even if empty)."""
    return key(field, WT_LEN) + varint(len(data)) + data


def f_uint(field, value):
    if value == 0:
        return b""
    return key(field, WT_VARINT) + varint(value)


def f_bool(field, value):
    return key(field, WT_VARINT) + b"\x01" if value else b""


def grpc_frame(message):
    """gRPC length-prefixed message: compressed flag 0, 4-byte big-endian length."""
    return struct.pack(">BI", 0, len(message)) + message


# CheckAndDeductRequest: 1 request_id, 2 account_id, 3 user_id, 4 workspace_id, 5 action,
# 6 quantity (uint64), 7 metadata (map, unused here), 8 dry_run, 9 deny_as_error.
def check_and_deduct(account, action, quantity, request_id="", dry_run=False, user="", workspace=""):
    return b"".join(
        [
            f_string(1, request_id),
            f_string(2, account),
            f_string(3, user),
            f_string(4, workspace),
            f_string(5, action),
            f_uint(6, quantity),
            f_bool(8, dry_run),
        ]
    )


# GetBalanceRequest: 1 account_id.
def get_balance(account):
    return f_string(1, account)


# BatchCheckAndDeductRequest: 1 repeated CheckAndDeductRequest items.
def batch(items):
    return b"".join(f_bytes(1, item) for item in items)


def batch_ids(prefix, n):
    return ["%s-%d" % (prefix, i) for i in range(n)]


def build(args):
    """The protobuf message (without the gRPC prefix) for a parsed command line."""
    if args.scenario == "dryrun":
        return check_and_deduct(args.account, args.action, args.quantity, request_id=args.request_id, dry_run=True)
    if args.scenario == "balance":
        return get_balance(args.account)
    if args.scenario == "replay":
        return check_and_deduct(args.account, args.action, args.quantity, request_id=args.request_id)
    if args.scenario == "batch":
        return batch(
            [check_and_deduct(args.account, args.action, args.quantity, request_id=rid) for rid in batch_ids(args.prefix, args.items)]
        )
    raise ValueError(args.scenario)


# --- decoding (for selftest and spot checks) --------------------------------------------


def read_varint(buf, pos):
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def parse_fields(buf):
    """[(field, wire_type, value)]: value is an int (varint, fixed) or bytes (length-delimited)."""
    out = []
    pos = 0
    while pos < len(buf):
        k, pos = read_varint(buf, pos)
        field, wt = k >> 3, k & 7
        if field == 0:
            raise ValueError("field number 0 at byte %d" % pos)
        if wt == WT_VARINT:
            v, pos = read_varint(buf, pos)
        elif wt == WT_LEN:
            n, pos = read_varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("length-delimited field %d runs past the end" % field)
            v = bytes(buf[pos : pos + n])
            pos += n
        elif wt == 1:
            v = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wt == 5:
            v = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        else:
            raise ValueError("unsupported wire type %d (field %d)" % (wt, field))
        out.append((field, wt, v))
    return out


def split_frames(body):
    """The messages of a gRPC body (one or more length-prefixed frames)."""
    msgs = []
    pos = 0
    while pos < len(body):
        if pos + 5 > len(body):
            raise ValueError("truncated gRPC frame header at byte %d" % pos)
        flag, n = struct.unpack_from(">BI", body, pos)
        if flag != 0:
            raise ValueError("compressed frame (flag %d) at byte %d" % (flag, pos))
        pos += 5
        if pos + n > len(body):
            raise ValueError("gRPC frame says %d bytes, only %d left" % (n, len(body) - pos))
        msgs.append(bytes(body[pos : pos + n]))
        pos += n
    return msgs


# Just enough schema to name the fields we encode and the answers we want to read.
SCHEMA = {
    "CheckAndDeductRequest": {
        1: ("request_id", "string"),
        2: ("account_id", "string"),
        3: ("user_id", "string"),
        4: ("workspace_id", "string"),
        5: ("action", "string"),
        6: ("quantity", "uint"),
        8: ("dry_run", "bool"),
        9: ("deny_as_error", "bool"),
    },
    "GetBalanceRequest": {1: ("account_id", "string")},
    "BatchCheckAndDeductRequest": {1: ("items", "CheckAndDeductRequest")},
    "CheckAndDeductResponse": {
        1: ("decision", "enum:DECISION"),
        2: ("denial_reason", "enum:DENIAL_REASON"),
        3: ("denied_meter", "string"),
        4: ("credits_charged", "string"),
        5: ("allocations", "Allocation"),
        6: ("balance", "string"),
        7: ("cycle_spend", "string"),
        8: ("ledger_entry_id", "string"),
        9: ("replayed", "bool"),
        10: ("price_version", "uint"),
    },
    "Allocation": {1: ("grant_id", "string"), 2: ("grant_kind", "uint"), 3: ("credits", "string")},
    "BatchCheckAndDeductResponse": {1: ("results", "BatchItemResult")},
    "BatchItemResult": {
        1: ("response", "CheckAndDeductResponse"),
        2: ("error_code", "uint"),
        3: ("error_message", "string"),
    },
    "GetBalanceResponse": {
        1: ("account_id", "string"),
        2: ("balance", "string"),
        3: ("held", "string"),
        4: ("free_remaining", "string"),
        5: ("purchased_remaining", "string"),
        6: ("grants", "bytes"),
        7: ("holds", "bytes"),
        8: ("cycle_spend", "string"),
        9: ("spending_cap", "string"),
        10: ("alert_threshold", "string"),
        11: ("low_balance_threshold", "string"),
        12: ("overdraft_limit", "string"),
        13: ("meters", "bytes"),
        14: ("cycle_start", "bytes"),
        15: ("cycle_end", "bytes"),
        16: ("overdraft_used", "string"),
    },
}
REPEATED = {"items", "allocations", "results", "grants", "holds", "meters"}
ENUMS = {
    "DECISION": ["DECISION_UNSPECIFIED", "DECISION_ALLOWED", "DECISION_DENIED"],
    "DENIAL_REASON": [
        "DENIAL_REASON_UNSPECIFIED",
        "DENIAL_REASON_INSUFFICIENT_CREDITS",
        "DENIAL_REASON_SPENDING_CAP_REACHED",
        "DENIAL_REASON_USER_CAP_REACHED",
        "DENIAL_REASON_WORKSPACE_CAP_REACHED",
        "DENIAL_REASON_METER_LIMIT_REACHED",
        "DENIAL_REASON_ACCOUNT_SUSPENDED",
        "DENIAL_REASON_UNKNOWN_ACTION",
        "DENIAL_REASON_ACCOUNT_NOT_FOUND",
    ],
}


def decode(buf, msg_type):
    """A dict of the known fields of `buf` as `msg_type`; unknown fields under '_unknown'."""
    schema = SCHEMA[msg_type]
    out = {}
    for field, wt, v in parse_fields(buf):
        if field not in schema:
            out.setdefault("_unknown", []).append((field, wt, v))
            continue
        name, kind = schema[field]
        if kind == "string":
            if wt != WT_LEN:
                raise ValueError("%s.%s: wire type %d, expected 2" % (msg_type, name, wt))
            v = v.decode("utf-8")
        elif kind in ("uint", "bool") or kind.startswith("enum:"):
            if wt != WT_VARINT:
                raise ValueError("%s.%s: wire type %d, expected 0" % (msg_type, name, wt))
            if kind == "bool":
                v = bool(v)
            elif kind.startswith("enum:"):
                names = ENUMS[kind[5:]]
                v = names[v] if v < len(names) else v
        elif kind == "bytes":
            pass
        else:
            if wt != WT_LEN:
                raise ValueError("%s.%s: wire type %d, expected 2" % (msg_type, name, wt))
            v = decode(v, kind)
        if name in REPEATED:
            out.setdefault(name, []).append(v)
        else:
            out[name] = v
    return out


def summarize_batch(resp):
    """Counts over a decoded BatchCheckAndDeductResponse."""
    results = resp.get("results", [])
    s = {"results": len(results), "errors": 0, "allowed": 0, "denied": 0, "replayed": 0}
    for r in results:
        if r.get("error_code", 0):
            s["errors"] += 1
        inner = r.get("response", {})
        d = inner.get("decision")
        if d == "DECISION_ALLOWED":
            s["allowed"] += 1
        elif d == "DECISION_DENIED":
            s["denied"] += 1
        if inner.get("replayed"):
            s["replayed"] += 1
    return s


# --- self-check ------------------------------------------------------------------------


def selftest():
    failures = []

    def check(name, got, want):
        if got != want:
            failures.append("%s: got %r, want %r" % (name, got, want))

    # Varints: boundaries and round trips.
    for n in [0, 1, 127, 128, 300, 16383, 16384, 2**32 - 1, 2**63 - 1, 2**64 - 1]:
        check("varint %d" % n, read_varint(varint(n), 0), (n, len(varint(n))))
    check("varint 300 bytes", varint(300), b"\xac\x02")  # the protobuf docs' example
    check("varint 1 byte", varint(1), b"\x01")

    # A known encoding, byte for byte (field 2 "acme", field 5 "chat", field 6 = 1500, field 8 = true).
    msg = check_and_deduct("acme", "chat", 1500, dry_run=True)
    check("dryrun bytes", msg, b"\x12\x04acme\x2a\x04chat\x30\xdc\x0b\x40\x01")

    def parse(scenario, extra):
        ns = cli().parse_args([scenario] + extra)
        body = grpc_frame(build(ns))
        frames = split_frames(body)
        check(scenario + " frame count", len(frames), 1)
        check(scenario + " prefix", body[:5], struct.pack(">BI", 0, len(body) - 5))
        return frames[0]

    m = decode(parse("dryrun", ["--account", "acme", "--action", "chat", "--quantity", "1500"]), "CheckAndDeductRequest")
    check("dryrun", m, {"account_id": "acme", "action": "chat", "quantity": 1500, "dry_run": True})

    m = decode(parse("balance", ["--account", "org-42"]), "GetBalanceRequest")
    check("balance", m, {"account_id": "org-42"})

    m = decode(
        parse("replay", ["--account", "acme", "--action", "chat", "--quantity", "7", "--request-id", "fixed-1"]),
        "CheckAndDeductRequest",
    )
    check("replay", m, {"request_id": "fixed-1", "account_id": "acme", "action": "chat", "quantity": 7})

    m = decode(
        parse("batch", ["--account", "acme", "--action", "chat", "--quantity", "1500", "--items", "100", "--prefix", "p"]),
        "BatchCheckAndDeductRequest",
    )
    items = m.get("items", [])
    check("batch item count", len(items), 100)
    check("batch ids distinct", len({i.get("request_id") for i in items}), 100)
    check("batch item 0", items[0] if items else None, {"request_id": "p-0", "account_id": "acme", "action": "chat", "quantity": 1500})
    check("batch item 99 id", items[99].get("request_id") if len(items) == 100 else None, "p-99")
    check("batch items not dry run", any(i.get("dry_run") for i in items), False)

    # Large quantity (uint64 max) and a non-ASCII id survive the round trip.
    big = decode(check_and_deduct("a", "b", 2**64 - 1, request_id="r-\u00e9"), "CheckAndDeductRequest")
    check("uint64 max", big.get("quantity"), 2**64 - 1)
    check("utf-8 id", big.get("request_id"), "r-\u00e9")

    # Decoding a response shaped like the server's (built with the same encoder).
    ok = f_uint(1, 1) + f_string(4, "0.0045") + f_string(6, "999999.9955") + f_bool(9, True)
    denied = f_uint(1, 2) + f_uint(2, 1)
    resp = f_bytes(1, f_bytes(1, ok)) + f_bytes(1, f_bytes(1, denied)) + f_bytes(1, f_uint(2, 6) + f_string(3, "x"))
    s = summarize_batch(decode(split_frames(grpc_frame(resp))[0], "BatchCheckAndDeductResponse"))
    check("batch summary", s, {"results": 3, "errors": 1, "allowed": 1, "denied": 1, "replayed": 1})

    # Malformed input is refused, not misread.
    for name, bad in [("truncated varint", b"\x08\x80"), ("overlong field", b"\x0a\x05ab"), ("field 0", b"\x00\x01")]:
        try:
            parse_fields(bad)
            failures.append(name + ": accepted")
        except ValueError:
            pass
    try:
        split_frames(b"\x00\x00\x00\x00\x09abc")
        failures.append("short frame: accepted")
    except ValueError:
        pass

    if failures:
        for f in failures:
            print("FAIL " + f, file=sys.stderr)
        return 1
    print("selftest: ok (varints, 4 scenarios, response decoding, malformed input)")
    return 0


# --- command line -----------------------------------------------------------------------


def cli():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="scenario", required=True)

    def spend(sp):
        sp.add_argument("--account", default="acme")
        sp.add_argument("--action", default="chat")
        sp.add_argument("--quantity", type=int, default=1500)

    sp = sub.add_parser("dryrun", help="CheckAndDeduct with dry_run=true")
    spend(sp)
    sp.add_argument("--request-id", default="", help="optional; a dry run needs none")

    sp = sub.add_parser("balance", help="GetBalance")
    sp.add_argument("--account", default="acme")

    sp = sub.add_parser("replay", help="CheckAndDeduct with a fixed request_id")
    spend(sp)
    sp.add_argument("--request-id", default="h2load-replay", help="the fixed idempotency key (1-128 bytes)")

    sp = sub.add_parser("batch", help="BatchCheckAndDeduct of N items")
    spend(sp)
    sp.add_argument("--items", type=int, default=100)
    sp.add_argument("--prefix", default="h2load-batch", help='item i gets request_id "<prefix>-<i>"')

    sub.add_parser("selftest", help="encode and decode every scenario")

    sp = sub.add_parser("decode", help="read a gRPC body on stdin and print its messages")
    sp.add_argument(
        "--as",
        dest="as_type",
        default="CheckAndDeductResponse",
        choices=sorted(SCHEMA),
        help="message type of every frame (default CheckAndDeductResponse)",
    )
    return p


def main(argv=None):
    args = cli().parse_args(argv)
    if args.scenario == "selftest":
        return selftest()
    if args.scenario == "decode":
        body = sys.stdin.buffer.read()
        for msg in split_frames(body):
            d = decode(msg, args.as_type)
            if args.as_type == "BatchCheckAndDeductResponse":
                print(summarize_batch(d))
            else:
                print(d)
        return 0
    if getattr(args, "quantity", 1) < 1:
        print("error: --quantity must be at least 1", file=sys.stderr)
        return 2
    rid = getattr(args, "request_id", "")
    if len(rid.encode("utf-8")) > 128 or (args.scenario == "replay" and not rid):
        print("error: --request-id must be 1-128 bytes", file=sys.stderr)
        return 2
    if args.scenario == "batch":
        if args.items < 1:
            print("error: --items must be at least 1", file=sys.stderr)
            return 2
        if len(("%s-%d" % (args.prefix, args.items - 1)).encode("utf-8")) > 128:
            print("error: --prefix too long: request ids are at most 128 bytes", file=sys.stderr)
            return 2
    body = grpc_frame(build(args))
    if sys.stdout.isatty():
        print("error: refusing to write binary to a terminal; redirect to a file", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
