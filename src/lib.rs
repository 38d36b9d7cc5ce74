//! creditd: a gRPC metering sidecar and quota server for AI platforms.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod domain;
pub mod engine;
pub mod error;
pub mod journal;
pub mod proto;
pub mod store;
pub mod telemetry;
