//! The one seam through which the crate reads time, and waits for it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Instant, SystemTime};

/// A monotonic clock. Token deadlines are computed from it, and the layer's waits on it (the
/// background renewer's, and those of IQM's rate limit) end by it.
///
/// The default is [`SystemClock`]. Tests swap in a clock they move by hand (see
/// `iqm_auth::testing::ManualClock` with the `test-util` feature) to check expiry without
/// sleeping.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current instant. Must never go backwards.
    fn now(&self) -> Instant;

    /// The wall-clock time, for expiries kept beyond this process (a stored token set).
    /// Defaults to [`SystemTime::now`]; a clock moved by hand moves it too.
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }

    /// Waits until [`now`](Self::now) reaches `deadline`. Defaults to Tokio's timer for the
    /// time left; a clock moved by hand wakes its sleepers when it is moved past their deadline.
    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let left = deadline.saturating_duration_since(self.now());
        Box::pin(tokio::time::sleep(left))
    }
}

/// The real monotonic clock, [`Instant::now`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}
