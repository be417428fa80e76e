use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::clock::Clock;

/// A [`Clock`] that only moves when told to, for testing expiry without sleeping. The layer's
/// waits on it (its background renewer, IQM's rate limit) end when it is moved past them.
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
    /// Wakes the sleepers whenever the clock moves.
    moved: Notify,
}

impl ManualClock {
    /// A clock standing at the real current instant and time.
    pub fn new() -> Self {
        Self {
            now: Mutex::new((Instant::now(), SystemTime::now())),
            moved: Notify::new(),
        }
    }

    /// Moves the clock forward, wall-clock time with it.
    pub fn advance(&self, by: Duration) {
        {
            let mut now = self.now.lock();
            if let (Some(instant), Some(wall)) = (now.0.checked_add(by), now.1.checked_add(by)) {
                *now = (instant, wall);
            }
        }
        self.moved.notify_waiters();
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

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            loop {
                // Registered before the clock is read, so a move in between is not missed.
                let moved = self.moved.notified();
                tokio::pin!(moved);
                moved.as_mut().enable();
                if self.now() >= deadline {
                    return;
                }
                moved.await;
            }
        })
    }
}
