-- The account states of each group commit, postcard-encoded in one blob (a list of
-- (account id, state)): a commit appends a few sequential pages however many accounts it
-- touched. `accounts` holds each state only once it moves out of this log (see
-- src/store/account_log.rs); recovery reads `accounts`, then this log over it.
CREATE TABLE account_log (
    seq         INTEGER PRIMARY KEY,
    states      BLOB NOT NULL
);
