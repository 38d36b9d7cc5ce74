// k6 load test for creditd's hot path: creditd.v1.Metering/CheckAndDeduct over plaintext gRPC.
//
//   k6 run load-tests/k6/metering.js                                  # 10 VUs for 10 s
//   CREDITD_ADDR=127.0.0.1:50071 k6 run -e DURATION=5s load-tests/k6/metering.js
//   k6 run --vus 50 --duration 30s -e ACCOUNT=org-7 load-tests/k6/metering.js
//
// Environment (pass with `-e NAME=value` or export it):
//   CREDITD_ADDR  host:port of a running creditd (default 127.0.0.1:50051)
//   ACCOUNT       account to charge (default acme); ACTION (chat); QUANTITY (1500)
//   VUS, DURATION default 10 and 10s (the --vus / --duration flags override them too)
//   P99_MS        threshold on grpc_req_duration p(99), in ms (default 50)
//   RUN_ID        prefix of the request ids (default: a new one per run, so that a second
//                 run does not replay the first run's ids and measure the replay path)
//
// What must exist first (CREDITD_SERVER=http://$CREDITD_ADDR):
//   creditd account create acme && creditd grant acme 1000000 &&
//   creditd price set chat 0.003 --unit-size 1000
//
// Every call carries a unique request_id "<run>-<VU>-<ITER>", so every call is a real
// deduction (never an idempotent replay). A denial (e.g. out of credits) is an answer, not an
// error: the checks accept DECISION_ALLOWED and DECISION_DENIED and count them separately.
//
// The proto files are loaded from ../../proto (relative to this script), so run k6 from any
// directory as long as the script stays in load-tests/k6/.
import grpc from 'k6/net/grpc';
import { check } from 'k6';
import { Counter } from 'k6/metrics';

const ADDR = __ENV.CREDITD_ADDR || '127.0.0.1:50051';
const ACCOUNT = __ENV.ACCOUNT || 'acme';
const ACTION = __ENV.ACTION || 'chat';
const QUANTITY = parseInt(__ENV.QUANTITY || '1500', 10);
const P99_MS = parseFloat(__ENV.P99_MS || '50');

const allowed = new Counter('creditd_allowed');
const denied = new Counter('creditd_denied');
const replayed = new Counter('creditd_replayed');

export const options = {
  vus: parseInt(__ENV.VUS || '10', 10),
  duration: __ENV.DURATION || '10s',
  thresholds: {
    grpc_req_duration: [`p(99)<${P99_MS}`],
    checks: ['rate>0.99'],
  },
  // p(99.9) in the end-of-test summary as well.
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'p(99.9)', 'max'],
};

const client = new grpc.Client();
// Import path first, then the file name relative to it; imports such as
// "creditd/v1/common.proto" resolve against the same path, google/protobuf/* are built in.
client.load(['../../proto'], 'creditd/v1/metering.proto');

// One prefix for the whole run, shared by every VU.
export function setup() {
  return { run: __ENV.RUN_ID || `k6-${Date.now().toString(36)}-${Math.floor(Math.random() * 1e9).toString(36)}` };
}

export default function (data) {
  if (__ITER === 0) {
    client.connect(ADDR, { plaintext: true, timeout: '5s' });
  }

  const res = client.invoke('creditd.v1.Metering/CheckAndDeduct', {
    request_id: `${data.run}-${__VU}-${__ITER}`,
    account_id: ACCOUNT,
    action: ACTION,
    quantity: QUANTITY,
  });

  const decision = res && res.message ? res.message.decision : undefined;
  check(res, {
    'status is OK': (r) => r && r.status === grpc.StatusOK,
    'decision is ALLOWED or DENIED': () => decision === 'DECISION_ALLOWED' || decision === 'DECISION_DENIED',
  });
  if (decision === 'DECISION_ALLOWED') allowed.add(1);
  else if (decision === 'DECISION_DENIED') denied.add(1);
  if (res && res.message && res.message.replayed) replayed.add(1);
}

export function teardown() {
  client.close();
}
