//! The fleet's line of turns as [`MemoryCoordinator`](super::MemoryCoordinator) keeps it: the
//! same rules as `RedisSession`'s scripts (`redis/scripts.rs`), in memory.

use std::time::{Duration, Instant};

use super::{Pace, Turn};

/// The turns booked in the last interval and ahead, by instant.
///
/// Invariants: no two turns are closer than one interval; an API request's turn is the first
/// free one at or after the window's end, refused if later than it may wait; an auth call's is
/// the first free one among turns already come and other auth calls', and the API requests'
/// turns not yet come move back as little as it takes to keep them an interval apart.
#[derive(Debug, Default)]
pub(super) struct Line {
    /// (name, auth call, instant), in the order of their instants.
    turns: Vec<(String, bool, Instant)>,
}

/// The first instant at or after `from` at least `interval` from each of `taken` (sorted).
fn first_free(taken: &[Instant], from: Instant, interval: Duration) -> Instant {
    let mut slot = from;
    for at in taken {
        if *at + interval <= slot {
            continue;
        }
        if *at >= slot + interval {
            break;
        }
        slot = *at + interval;
    }
    slot
}

fn insert_sorted(taken: &mut Vec<Instant>, at: Instant) {
    let place = taken.partition_point(|t| *t <= at);
    taken.insert(place, at);
}

impl Line {
    /// Books a turn for `name` at or after `from`, as [`Pace`] says.
    pub(super) fn book(&mut self, name: &str, pace: &Pace, from: Instant, now: Instant) -> Turn {
        let interval = pace.interval;
        self.turns
            .retain(|(other, _, at)| other != name && *at + interval > now);
        let (mut fixed, pending): (Vec<_>, Vec<_>) = self
            .turns
            .iter()
            .cloned()
            .partition(|(_, auth, at)| !pace.auth || *auth || *at <= now);
        let mut taken: Vec<Instant> = fixed.iter().map(|(_, _, at)| *at).collect();
        let slot = first_free(&taken, from.max(now), interval);
        let wait = slot - now;
        if wait > pace.max_wait {
            return Turn::Refused(wait);
        }
        fixed.push((name.to_owned(), pace.auth, slot));
        insert_sorted(&mut taken, slot);
        for (other, auth, at) in pending {
            let moved = first_free(&taken, at, interval);
            insert_sorted(&mut taken, moved);
            fixed.push((other, auth, moved));
        }
        fixed.sort_by_key(|(_, _, at)| *at);
        self.turns = fixed;
        if wait.is_zero() {
            Turn::Now
        } else {
            Turn::In(wait)
        }
    }

    /// Confirms `name`'s turn at `now`, IQM's window closed until `window` (if it is).
    pub(super) fn confirm(
        &mut self,
        name: &str,
        pace: &Pace,
        window: Option<Instant>,
        now: Instant,
    ) -> Turn {
        let window = window.filter(|end| *end > now);
        let at = self
            .turns
            .iter()
            .find(|(other, _, _)| other == name)
            .map(|(_, _, at)| *at);
        match at {
            None => self.book(name, pace, window.unwrap_or(now), now),
            Some(at) if window.is_some_and(|end| at < end) => {
                self.book(name, pace, window.unwrap_or(now), now)
            }
            Some(at) if at <= now => Turn::Now,
            Some(at) if at - now > pace.max_wait => {
                self.cancel(name);
                Turn::Refused(at - now)
            }
            Some(at) => Turn::In(at - now),
        }
    }

    pub(super) fn cancel(&mut self, name: &str) {
        self.turns.retain(|(other, _, _)| other != name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn api(max_wait: u64) -> Pace {
        Pace::new(S(3), S(max_wait), false)
    }

    #[test]
    fn api_requests_go_one_interval_apart_in_order_and_are_refused_past_their_wait() {
        let t0 = Instant::now();
        let mut line = Line::default();
        assert_eq!(line.book("a", &api(10), t0, t0), Turn::Now);
        assert_eq!(line.book("b", &api(10), t0, t0), Turn::In(S(3)));
        assert_eq!(line.book("c", &api(10), t0, t0), Turn::In(S(6)));
        assert_eq!(line.book("d", &api(5), t0, t0), Turn::Refused(S(9)));
        assert_eq!(line.confirm("b", &api(10), None, t0 + S(3)), Turn::Now);
    }

    #[test]
    fn an_auth_call_goes_within_one_interval_and_the_waiting_requests_move_back() {
        let t0 = Instant::now();
        let mut line = Line::default();
        for name in ["a", "b", "c"] {
            line.book(name, &api(60), t0, t0);
        }
        let auth = Pace::new(S(3), S(60), true);
        assert_eq!(
            line.book("renewal", &auth, t0 + S(1), t0 + S(1)),
            Turn::In(S(2))
        );
        assert_eq!(line.confirm("b", &api(60), None, t0 + S(3)), Turn::In(S(3)));
        assert_eq!(line.confirm("c", &api(60), None, t0 + S(6)), Turn::In(S(3)));
    }

    #[test]
    fn a_cancelled_turn_is_the_next_requests_and_a_window_moves_turns_past_its_end() {
        let t0 = Instant::now();
        let mut line = Line::default();
        for name in ["a", "b", "c"] {
            line.book(name, &api(60), t0, t0);
        }
        line.cancel("b");
        assert_eq!(line.book("d", &api(60), t0, t0), Turn::In(S(3)));
        assert_eq!(
            line.confirm("c", &api(60), Some(t0 + S(20)), t0 + S(6)),
            Turn::In(S(14))
        );
    }
}
