//! creditd: a gRPC metering sidecar and quota server for AI platforms.
#![deny(unsafe_code)] // allowed exceptions: thread priorities (src/background), one allocator option

pub mod allocator;
pub mod api;
pub mod app;
pub mod background;
pub mod cli;
pub mod config;
pub mod domain;
pub mod engine;
pub mod error;
pub mod journal;
pub mod pacing;
pub mod proto;
pub mod store;
pub mod telemetry;
