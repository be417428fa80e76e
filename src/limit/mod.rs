//! IQM's rate limit as the layer keeps to it: the window a 429 closes (always on), and the pace
//! of [`request_rate`](crate::IqmAuthBuilder::request_rate) (opt-in). The session's side, which
//! shares both with the fleet, is `session/gate.rs`.
//!
//! - [`window`]: after a 429, no request for the account until IQM's `Retry-After` has passed.
//! - [`pacer`]: requests take turns at the request rate, auth calls first, in one process.

mod pacer;
mod window;

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub(crate) use self::pacer::Pacer;
pub(crate) use self::window::Window;
use crate::clock::Clock;

/// How long a request may wait for IQM's rate limit (a closed window, its turn) unless set
/// otherwise: the longest `Retry-After` IQM's minute gives is 60 s, and a caller should hear
/// within half of that.
pub(crate) const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(30);

/// What is asking to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A login, refresh, logout or sign-up call of the layer's own: it goes first.
    Auth,
    /// A request to IQM's API through the middleware.
    Api,
}

/// A request rate: at most `calls` in any `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    pub(crate) calls: u32,
    pub(crate) period: Duration,
}

impl Rate {
    /// The time between two requests.
    pub(crate) fn interval(self) -> Duration {
        (self.period / self.calls.max(1)).max(Duration::from_nanos(1))
    }

    /// One of `replicas`' share of it: at least one call per period.
    pub(crate) fn share(self, replicas: u32) -> Self {
        Self {
            calls: (self.calls / replicas.max(1)).max(1),
            period: self.period,
        }
    }
}

/// The layer's side of IQM's rate limit.
#[derive(Debug)]
pub(crate) struct Limits {
    pub(crate) window: Window,
    pub(crate) rate: Option<Rate>,
    /// How long a request may wait for the window or its turn.
    pub(crate) wait: Duration,
    /// The pace of this process's own requests (no shared session, or one without a pace).
    pub(crate) own: Option<Pacer>,
    /// This replica's share of the fleet's pace while the shared session is out of reach, and
    /// the number of replicas it was cut for.
    pub(crate) alone: Mutex<Option<(u32, Arc<Pacer>)>>,
    /// When a paced request last tried a shared session known to be out of reach.
    pub(crate) last_probe: Mutex<Option<Instant>>,
    /// Whether pacing alone was warned about (once per outage).
    pub(crate) warned_alone: std::sync::atomic::AtomicBool,
}

impl Limits {
    pub(crate) fn new(rate: Option<Rate>, wait: Duration, clock: &Arc<dyn Clock>) -> Self {
        Self {
            window: Window::default(),
            rate,
            wait,
            own: rate.map(|rate| Pacer::new(rate.calls, rate.period, Arc::clone(clock))),
            alone: Mutex::new(None),
            last_probe: Mutex::new(None),
            warned_alone: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The pacer of `replicas`' share of `rate`, made anew when the share changes (requests
    /// already in line keep theirs).
    pub(crate) fn alone(&self, rate: Rate, replicas: u32, clock: &Arc<dyn Clock>) -> Arc<Pacer> {
        let mut alone = self.alone.lock();
        match &*alone {
            Some((cut_for, pacer)) if *cut_for == replicas => Arc::clone(pacer),
            _ => {
                let share = rate.share(replicas);
                let pacer = Arc::new(Pacer::new(share.calls, share.period, Arc::clone(clock)));
                *alone = Some((replicas, Arc::clone(&pacer)));
                pacer
            }
        }
    }
}
