//! Audit records: every admin change, who made it, and the state before and after.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub id: String,
    #[serde(with = "crate::domain::time::compact")]
    pub occurred_at: DateTime<Utc>,
    pub actor: String,
    pub operation: String,
    /// Empty for changes that concern no single account (the global price book).
    pub account_id: String,
    pub before_json: String,
    pub after_json: String,
    pub request_id: Option<String>,
}
