//! IQM's 429 window: after IQM answers `429 Too Many Requests`, no request for the account is
//! sent before the time it asked for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The window: closed until an instant, or open.
///
/// Invariant: while it is closed, `maybe_closed` is set, so the hot path (which reads only that
/// flag) never sends into it; the flag is cleared only under the lock, by a reader that found
/// the window's end passed.
#[derive(Debug, Default)]
pub(crate) struct Window {
    maybe_closed: AtomicBool,
    until: Mutex<Option<Instant>>,
}

impl Window {
    /// Whether a window may be closed: the hot path's one read, no lock and no clock.
    pub(crate) fn maybe_closed(&self) -> bool {
        self.maybe_closed.load(Ordering::Relaxed)
    }

    /// Closes the window until `until`, unless it is already closed longer. Returns whether it
    /// now closes later than before.
    pub(crate) fn close_until(&self, until: Instant) -> bool {
        let mut current = self.until.lock();
        if current.is_some_and(|end| end >= until) {
            return false;
        }
        *current = Some(until);
        self.maybe_closed.store(true, Ordering::Relaxed);
        true
    }

    /// How much longer the window stays closed at `now`; `None` once it is open.
    pub(crate) fn closed_for(&self, now: Instant) -> Option<Duration> {
        if !self.maybe_closed() {
            return None;
        }
        let mut current = self.until.lock();
        match *current {
            Some(end) if end > now => Some(end - now),
            _ => {
                *current = None;
                self.maybe_closed.store(false, Ordering::Relaxed);
                None
            }
        }
    }

    /// When the window opens, if it is closed at `now`.
    pub(crate) fn closed_until(&self, now: Instant) -> Option<Instant> {
        self.closed_for(now).map(|left| now + left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_window_stays_closed_until_its_end_and_then_opens() {
        let t0 = Instant::now();
        let window = Window::default();
        assert!(!window.maybe_closed());
        assert!(window.close_until(t0 + S(20)));
        assert!(window.maybe_closed());
        assert_eq!(window.closed_for(t0 + S(5)), Some(S(15)));
        assert_eq!(window.closed_for(t0 + S(20)), None);
        assert!(!window.maybe_closed(), "the hot path reads it open again");
    }

    #[test]
    fn a_later_429_lengthens_the_window_and_an_earlier_end_never_shortens_it() {
        let t0 = Instant::now();
        let window = Window::default();
        window.close_until(t0 + S(20));
        assert!(!window.close_until(t0 + S(10)));
        assert_eq!(window.closed_for(t0), Some(S(20)));
        assert!(window.close_until(t0 + S(30)));
        assert_eq!(window.closed_until(t0 + S(1)), Some(t0 + S(30)));
    }
}
