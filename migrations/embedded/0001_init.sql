-- The embedded store: current state, journal, answered requests, audit log, settings.
-- Applied at start; PRAGMA user_version records the last migration applied.

-- The whole state of one account (postcard-encoded), written with the journal records that
-- made it.
CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    state       BLOB NOT NULL,
    updated_ms  INTEGER NOT NULL
);

-- The ledger, one row per group commit: its entries postcard-encoded in one blob, so a
-- commit appends a few sequential pages however many entries it holds. `high_id` is the
-- highest numeric entry id written so far (new ids start above it after a restart).
-- Read in `seq` order by whoever forwards the ledger; nothing queries single entries here.
CREATE TABLE journal (
    seq         INTEGER PRIMARY KEY,
    written_ms  INTEGER NOT NULL,
    high_id     INTEGER NOT NULL,
    entries     BLOB NOT NULL
);

-- Answers to request ids (idempotency), one row per group commit, postcard-encoded.
-- `newest_ms` is the newest answer's time: a row is pruned once it is past retention, and
-- recovery reads back the rows within it.
CREATE TABLE answers (
    seq         INTEGER PRIMARY KEY,
    newest_ms   INTEGER NOT NULL,
    rows        BLOB NOT NULL
);

-- Answers evicted from memory (beyond limits.idempotency_max_entries), indexed by key so a
-- retry of an old request still finds its answer. Written in bulk when memory evicts.
CREATE TABLE requests (
    key         TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL,
    fingerprint INTEGER NOT NULL,
    outcome     BLOB NOT NULL,
    created_ms  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE audit_log (
    id          TEXT PRIMARY KEY,
    occurred_ms INTEGER NOT NULL,
    account_id  TEXT NOT NULL,
    actor       TEXT NOT NULL,
    operation   TEXT NOT NULL,
    request_id  TEXT,
    before_json TEXT NOT NULL,
    after_json  TEXT NOT NULL
);
CREATE INDEX audit_by_account ON audit_log (account_id, id);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
