//! The one seam through which the crate reads time.

use std::fmt;
use std::time::{Instant, SystemTime};

/// A monotonic clock. Token deadlines are computed from it.
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
}

/// The real monotonic clock, [`Instant::now`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}
