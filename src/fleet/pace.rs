//! The fleet's pace: the types of [`SessionCoordinator::take_turn`](super::SessionCoordinator::take_turn).

use std::time::Duration;

/// A request asking for its turn in the fleet's pace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Pace {
    /// The fleet's interval between two IQM requests: the request rate's period divided by its
    /// calls.
    pub interval: Duration,
    /// How long the request may wait for its turn; when a turn is confirmed, how long it still
    /// may.
    pub max_wait: Duration,
    /// Whether it is an auth call: its turn comes before that of every API request whose turn
    /// has not come yet (they move back one interval), and it is never refused.
    pub auth: bool,
}

impl Pace {
    /// A request of the fleet whose requests go one per `interval`, that may wait `max_wait`.
    pub fn new(interval: Duration, max_wait: Duration, auth: bool) -> Self {
        Self {
            interval,
            max_wait,
            auth,
        }
    }
}

/// A coordinator's answer to a request for its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Turn {
    /// Its turn is now: send it.
    Now,
    /// Its turn comes in this long: wait, then confirm it.
    In(Duration),
    /// Its turn would come in this long, later than it may wait: it holds no turn.
    Refused(Duration),
}
