//! The gRPC surface: tonic services that parse requests at the boundary (`convert`), call
//! the engine and map its answers back. No business rule lives here.

pub mod admin;
pub mod convert;
pub mod metering;
pub mod reporting;

use crate::engine::admin::Caller;
use tonic::Request;

/// Header naming who makes an admin change, recorded in the audit log (until API keys
/// name the caller themselves).
pub const ACTOR_HEADER: &str = "x-creditd-actor";

pub fn caller<T>(request: &Request<T>, request_id: Option<String>) -> Caller {
    let actor = request
        .metadata()
        .get(ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .unwrap_or("local")
        .to_string();
    Caller { actor, request_id }
}
