//! Hot-path requests after validation: every field here is already known to be well formed.

use super::idempotency::Fingerprint;
use std::collections::BTreeMap;
use std::time::Duration;

/// Where a spend comes from inside the organization, and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpendTarget {
    pub account_id: String,
    pub user_id: Option<String>,
    pub workspace_id: Option<String>,
    pub action: String,
    pub quantity: u64,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
pub struct DeductRequest {
    /// `None` only for a dry run.
    pub request_id: Option<String>,
    pub target: SpendTarget,
    pub dry_run: bool,
}

#[derive(Clone, Debug)]
pub struct ReserveRequest {
    pub request_id: String,
    pub target: SpendTarget,
    pub ttl: Duration,
}

#[derive(Clone, Debug)]
pub struct CommitRequest {
    pub request_id: String,
    pub reservation_id: String,
    pub quantity: u64,
    pub is_final: bool,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
pub struct ReleaseRequest {
    pub request_id: String,
    pub reservation_id: String,
}

#[derive(Clone, Debug)]
pub struct ExtendRequest {
    pub request_id: String,
    pub reservation_id: String,
    pub ttl: Duration,
}

impl SpendTarget {
    fn fingerprint(&self, op: &str) -> Fingerprint {
        let mut f = Fingerprint::default()
            .str(op)
            .str(&self.account_id)
            .str(self.user_id.as_deref().unwrap_or(""))
            .str(self.workspace_id.as_deref().unwrap_or(""))
            .str(&self.action)
            .num(self.quantity);
        for (k, v) in &self.metadata {
            f = f.str(k).str(v);
        }
        f
    }
}

impl DeductRequest {
    pub fn fingerprint(&self) -> u64 {
        self.target.fingerprint("deduct").finish()
    }
}

impl ReserveRequest {
    pub fn fingerprint(&self) -> u64 {
        self.target.fingerprint("reserve").num(self.ttl.as_millis() as u64).finish()
    }
}

impl CommitRequest {
    pub fn fingerprint(&self) -> u64 {
        let mut f =
            Fingerprint::default().str("commit").str(&self.reservation_id).num(self.quantity).num(self.is_final as u64);
        for (k, v) in &self.metadata {
            f = f.str(k).str(v);
        }
        f.finish()
    }
}

impl ReleaseRequest {
    pub fn fingerprint(&self) -> u64 {
        Fingerprint::default().str("release").str(&self.reservation_id).finish()
    }
}

impl ExtendRequest {
    pub fn fingerprint(&self) -> u64 {
        Fingerprint::default().str("extend").str(&self.reservation_id).num(self.ttl.as_millis() as u64).finish()
    }
}

/// Reservation ids name their account (`<account>/rs_<hex>`), so Commit and Release find
/// the account without a global index, across restarts and instances.
pub fn reservation_account(reservation_id: &str) -> Option<&str> {
    let (account, hold) = reservation_id.rsplit_once('/')?;
    (!account.is_empty() && hold.starts_with("rs_")).then_some(account)
}
