//! Time, passed in: the engine never reads a clock directly, so tests move time by hand.

use crate::domain::Now;
use chrono::{DateTime, Utc};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Now;
}

/// Wall time from the system, expiries from a monotonic `Instant`.
pub struct SystemClock {
    started: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        SystemClock { started: Instant::now() }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Now {
        Now { wall: Utc::now(), mono_ms: self.started.elapsed().as_millis() as u64 }
    }
}

/// A clock that moves only when told to: for tests of expiry and cycle rollover.
pub struct ManualClock {
    now: Mutex<Now>,
}

impl ManualClock {
    pub fn new(wall: DateTime<Utc>) -> Self {
        ManualClock { now: Mutex::new(Now { wall, mono_ms: 1_000 }) }
    }

    /// Moves both clocks forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().expect("clock lock");
        now.wall += chrono::Duration::from_std(by).expect("duration in range");
        now.mono_ms += by.as_millis() as u64;
    }

    /// Steps the wall clock only (as NTP might); expiries must not notice.
    pub fn set_wall(&self, wall: DateTime<Utc>) {
        self.now.lock().expect("clock lock").wall = wall;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Now {
        *self.now.lock().expect("clock lock")
    }
}
