//! Start-up: the engine's accounts rebuilt from the store. Each stored state is decoded and
//! put in its cell as the store reads it, so memory never holds every account twice.

use super::cell::AccountCell;
use crate::domain::Now;
use crate::store::{decode_account, Recovered, Store, StoreError};
use dashmap::DashMap;
use std::sync::Arc;

/// What the engine starts from.
pub struct Restored {
    pub(super) accounts: DashMap<String, Arc<AccountCell>>,
    /// Accounts with live holds: the expiry sweep visits only these.
    pub(super) with_holds: DashMap<String, ()>,
    pub recovered: Recovered,
}

impl Restored {
    /// Reads the accounts, the request ids answered since `idem_since_ms` and the prices.
    /// `now` places the deadlines of live holds on this process's monotonic clock.
    pub fn from_store(store: &mut dyn Store, idem_since_ms: u64, now: Now) -> Result<Restored, StoreError> {
        let accounts = DashMap::with_capacity(store.account_count()?);
        let with_holds = DashMap::new();
        store.each_account(&mut |state| {
            let mut account = decode_account(state)?;
            account.restore_deadlines(now);
            if !account.holds.is_empty() {
                with_holds.insert(account.id.clone(), ());
            }
            accounts.insert(account.id.clone(), Arc::new(AccountCell::new(account)));
            Ok(())
        })?;
        let recovered = store.recover(idem_since_ms)?;
        Ok(Restored { accounts, with_holds, recovered })
    }

    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }
}
