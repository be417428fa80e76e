//! Pacing in one process: IQM requests take turns at the rate of `request_rate`, in the order
//! they asked, auth calls before API requests. The cells are `governor`'s GCRA, on the layer's
//! clock; the line in front of it is this file's.

use std::collections::VecDeque;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::stats::Counters;

use super::Kind;
use super::window::Window;

/// The layer's clock, as `governor` reads time.
#[derive(Clone)]
struct LayerClock(Arc<dyn Clock>);

impl governor::clock::Clock for LayerClock {
    type Instant = Instant;

    fn now(&self) -> Instant {
        self.0.now()
    }
}

type Cells = RateLimiter<NotKeyed, InMemoryState, LayerClock, NoOpMiddleware<Instant>>;

/// A line of requests waiting for their turn.
///
/// Invariants: requests go in the order they joined, every auth call before every API request;
/// one goes at a time, when its cell conforms and IQM's window is open; a request that leaves
/// (its future dropped, or refused) frees its place at once, so the next takes the first free
/// turn. An API request is refused at once if its turn would come later than it may wait, and
/// refused when that time comes if it is still in line (renewals' calls went first).
pub(crate) struct Pacer {
    cells: Cells,
    clock: Arc<dyn Clock>,
    interval: Duration,
    line: Mutex<Line>,
    /// Wakes the requests in line whenever its head may have changed.
    moved: Notify,
}

#[derive(Debug, Default)]
struct Line {
    auth: VecDeque<u64>,
    api: VecDeque<u64>,
    next_id: u64,
    /// When the head's cell conforms, as it last found: where estimates of later turns start.
    head_ready: Option<Instant>,
}

impl Line {
    fn head(&self) -> Option<u64> {
        self.auth.front().or(self.api.front()).copied()
    }

    fn is_empty(&self) -> bool {
        self.auth.is_empty() && self.api.is_empty()
    }

    /// How many requests would be ahead of one of `kind` joining now.
    fn ahead_of(&self, kind: Kind) -> usize {
        match kind {
            Kind::Auth => self.auth.len(),
            Kind::Api => self.auth.len() + self.api.len(),
        }
    }

    fn join(&mut self, kind: Kind) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        match kind {
            Kind::Auth => self.auth.push_back(id),
            Kind::Api => self.api.push_back(id),
        }
        id
    }

    fn leave(&mut self, id: u64) {
        self.auth.retain(|waiting| *waiting != id);
        self.api.retain(|waiting| *waiting != id);
        if self.is_empty() {
            self.head_ready = None;
        }
    }
}

impl Pacer {
    /// At most `calls` requests in any `period` (at least one), one every `period / calls`.
    pub(crate) fn new(calls: u32, period: Duration, clock: Arc<dyn Clock>) -> Self {
        let interval = (period / calls.max(1)).max(Duration::from_nanos(1));
        let quota = Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(NonZeroU32::MIN);
        Self {
            cells: RateLimiter::direct_with_clock(quota, LayerClock(Arc::clone(&clock))),
            clock,
            interval,
            line: Mutex::default(),
            moved: Notify::new(),
        }
    }

    /// When the turn of a request joining the line now, `ahead` places back, would come.
    fn estimate(&self, line: &Line, window: &Window, now: Instant, ahead: usize) -> Instant {
        let first = [line.head_ready, window.closed_until(now)]
            .into_iter()
            .flatten()
            .fold(now, Instant::max);
        first + self.interval * u32::try_from(ahead).unwrap_or(u32::MAX)
    }

    /// Waits for the request's turn; `Ok` with how long it waited, or `Err` with how long until
    /// its turn would come, for an API request that may not wait `max_wait` for it.
    pub(crate) async fn take_turn(
        &self,
        kind: Kind,
        window: &Window,
        max_wait: Duration,
        counters: &Counters,
    ) -> Result<Duration, Duration> {
        let (id, start, deadline) = {
            let mut line = self.line.lock();
            if line.is_empty() && !window.maybe_closed() {
                match self.cells.check() {
                    Ok(()) => return Ok(Duration::ZERO),
                    Err(not_until) => line.head_ready = Some(not_until.earliest_possible()),
                }
            }
            let start = self.clock.now();
            let deadline = match kind {
                Kind::Api => start.checked_add(max_wait),
                Kind::Auth => None,
            };
            let turn = self.estimate(&line, window, start, line.ahead_of(kind));
            if deadline.is_some_and(|deadline| turn > deadline) {
                return Err(turn - start);
            }
            (line.join(kind), start, deadline)
        };
        // A new head (an auth call ahead of API requests) takes over the wait.
        self.moved.notify_waiters();
        let _waiting = counters.waiting();
        let mut place = Place {
            pacer: self,
            id: Some(id),
        };
        loop {
            let moved = self.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            let wake_at = {
                let mut line = self.line.lock();
                let now = self.clock.now();
                let mut wake_at = None;
                if line.head() == Some(id) {
                    match window.closed_until(now) {
                        Some(open) => wake_at = Some(open),
                        None => match self.cells.check() {
                            Ok(()) => {
                                line.leave(id);
                                place.id = None;
                                drop(line);
                                self.moved.notify_waiters();
                                return Ok(now - start);
                            }
                            Err(not_until) => {
                                let ready = not_until.earliest_possible();
                                line.head_ready = Some(ready);
                                wake_at = Some(ready);
                            }
                        },
                    }
                }
                if let Some(deadline) = deadline {
                    if now >= deadline {
                        let ahead = line.head().map_or(0, |head| usize::from(head != id));
                        let turn = self.estimate(&line, window, now, ahead);
                        drop(line);
                        drop(place);
                        return Err(turn.saturating_duration_since(now));
                    }
                }
                match (wake_at, deadline) {
                    (Some(at), Some(deadline)) => Some(at.min(deadline)),
                    (at, deadline) => at.or(deadline),
                }
            };
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        () = &mut moved => {}
                        () = self.clock.sleep_until(at) => {}
                    }
                }
                None => moved.await,
            }
        }
    }
}

/// A request's place in the line, given up when it is dropped.
struct Place<'a> {
    pacer: &'a Pacer,
    id: Option<u64>,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.pacer.line.lock().leave(id);
            self.pacer.moved.notify_waiters();
        }
    }
}

impl fmt::Debug for Pacer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pacer")
            .field("interval", &self.interval)
            .field("line", &*self.line.lock())
            .finish_non_exhaustive()
    }
}
