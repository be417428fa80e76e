use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use crate::clock::Clock;

/// A [`Clock`] that only moves when told to, for testing expiry without sleeping.
///
/// ```
/// use std::time::Duration;
/// use iqm_auth::{Clock, testing::ManualClock};
///
/// let clock = ManualClock::new();
/// let t0 = clock.now();
/// clock.advance(Duration::from_secs(3600));
/// assert_eq!(clock.now() - t0, Duration::from_secs(3600));
/// ```
#[derive(Debug)]
pub struct ManualClock {
    /// The instant and the wall-clock time, moved together.
    now: Mutex<(Instant, SystemTime)>,
}

impl ManualClock {
    /// A clock standing at the real current instant and time.
    pub fn new() -> Self {
        Self {
            now: Mutex::new((Instant::now(), SystemTime::now())),
        }
    }

    /// Moves the clock forward, wall-clock time with it.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock();
        if let (Some(instant), Some(wall)) = (now.0.checked_add(by), now.1.checked_add(by)) {
            *now = (instant, wall);
        }
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.now.lock().0
    }

    fn wall(&self) -> SystemTime {
        self.now.lock().1
    }
}
