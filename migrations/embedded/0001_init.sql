-- The embedded store: current state, journal, answered requests, audit log, settings.
-- Applied at start; PRAGMA user_version records the last migration applied.

-- The whole state of one account (postcard-encoded), written with the journal records that
-- made it.
CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    state       BLOB NOT NULL,
    updated_ms  INTEGER NOT NULL
);

-- Every ledger entry, keyed by the numeric part of its time-ordered id. Written once per
-- change in the group commit; per-account queries are the accounting store's job, so no
-- secondary index slows the hot path here.
CREATE TABLE journal (
    id          INTEGER PRIMARY KEY,
    account_id  TEXT NOT NULL,
    kind        TEXT NOT NULL,
    occurred_ms INTEGER NOT NULL,
    body        TEXT NOT NULL
);

-- Answers to request ids (idempotency), appended in commit order: sequential pages, no
-- index to update per request. Recovery reads back those within retention.
CREATE TABLE answers (
    seq         INTEGER PRIMARY KEY,
    key         TEXT NOT NULL,
    account_id  TEXT NOT NULL,
    fingerprint INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
    created_ms  INTEGER NOT NULL
);

-- Answers evicted from memory (beyond limits.idempotency_max_entries), indexed by key so a
-- retry of an old request still finds its answer. Written in bulk when memory evicts.
CREATE TABLE requests (
    key         TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL,
    fingerprint INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
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
