//! Integration tests: the real server on 127.0.0.1:0, a real SQLite data directory, and
//! generated gRPC clients. Each test has its own data directory, so tests run in parallel.

mod admin;
mod compaction;
mod denials;
mod durability;
mod helpers;
mod idempotency;
mod metering;
mod operations;
mod pacing;
mod reservations;
mod rollover;
mod store_failures;
mod validation;
