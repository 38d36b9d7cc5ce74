-- The blobs every commit appends (ledger entries, answers, account states) are written
-- LZ4-compressed from now on, about a third of their size: fewer bytes to write, checksum,
-- checkpoint and fsync per commit. `packed` says how a row's blob is stored: 0, plain
-- postcard (every row written before this migration); 1, an LZ4 block of it behind its
-- length (little-endian u32).
ALTER TABLE journal ADD COLUMN packed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE answers ADD COLUMN packed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE account_log ADD COLUMN packed INTEGER NOT NULL DEFAULT 0;
