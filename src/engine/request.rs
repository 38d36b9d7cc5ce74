//! Hot-path requests after validation: every field here is already known to be well formed.

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

/// FNV-1a over the canonical bytes of a request's arguments. Stable across builds and
/// versions, because it is persisted with the answer.
#[derive(Clone, Copy)]
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Self {
        Fingerprint(0xcbf2_9ce4_8422_2325)
    }
}

impl Fingerprint {
    pub fn bytes(mut self, field: &[u8]) -> Self {
        for &b in field.iter().chain(&[0xff]) {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    pub fn str(self, s: &str) -> Self {
        self.bytes(s.as_bytes())
    }

    pub fn num(self, n: u64) -> Self {
        self.bytes(&n.to_le_bytes())
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_separate_fields() {
        let a = Fingerprint::default().str("ab").str("c").finish();
        let b = Fingerprint::default().str("a").str("bc").finish();
        assert_ne!(a, b);
    }
}
