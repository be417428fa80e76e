//! The budget for failed auth calls. IQM allows about 20 requests a minute per account, auth
//! calls included: a layer that retried every failure would eat that limit during an outage or
//! with a wrong password. Every login or refresh call takes from this budget before it is sent,
//! and gives it back if it yields a usable token; while the budget is spent, no auth call is
//! sent. So a call that hangs, or is cut off by a timeout, counts as failed, calls in flight
//! count, and a token that lives its life is always renewed when it must be.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

const MINUTE: Duration = Duration::from_secs(60);

/// Invariant: at most `per_minute` failed calls in any 60 s, and at most `burst` in a row before
/// the budget refills at `per_minute` a minute. A token bucket alone would allow
/// `burst + per_minute` in a minute, so the calls of the last minute are kept too.
#[derive(Debug, Clone)]
pub(crate) struct CallBudget {
    per_minute: u32,
    burst: u32,
    /// When the bucket is full again ("theoretical arrival time" of the cell rate algorithm):
    /// a call is allowed at `now` if `now >= full_at - (burst - 1) * interval`.
    full_at: Option<Instant>,
    /// The failed calls of the last minute, oldest first.
    recent: VecDeque<Instant>,
}

impl CallBudget {
    /// A full budget; `per_minute` and `burst` are at least 1.
    pub(crate) fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            per_minute: per_minute.max(1),
            burst: burst.max(1),
            full_at: None,
            recent: VecDeque::new(),
        }
    }

    fn interval(&self) -> Duration {
        MINUTE / self.per_minute
    }

    /// `None` if a call may be sent at `now`; otherwise how long until one may.
    pub(crate) fn wait_at(&self, now: Instant) -> Option<Duration> {
        let tolerance = self.interval() * (self.burst - 1);
        let bucket = self
            .full_at
            .map(|full_at| full_at.saturating_duration_since(now))
            .filter(|until_full| *until_full > tolerance)
            .map(|until_full| until_full - tolerance);
        let window = (self.recent.len() >= self.per_minute as usize)
            .then(|| self.recent.front())
            .flatten()
            .map(|oldest| (*oldest + MINUTE).saturating_duration_since(now))
            .filter(|wait| !wait.is_zero());
        match (bucket, window) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or_default().max(b.unwrap_or_default())),
        }
    }

    /// Whether two calls may be sent at `now`, one after the other: a refresh that may fail,
    /// and the login that would follow it.
    pub(super) fn allows_two_at(&self, now: Instant) -> bool {
        if self.wait_at(now).is_some() {
            return false;
        }
        let mut after_one = self.clone();
        let _first = after_one.reserve(now);
        after_one.wait_at(now).is_none()
    }

    /// Takes one call at `now` from the budget, before it is sent; give it back with
    /// [`refund`](Self::refund) if it succeeds.
    pub(crate) fn reserve(&mut self, now: Instant) -> Reservation {
        self.charge(now);
        Reservation(now)
    }

    /// Gives back a reserved call that yielded a usable token.
    pub(crate) fn refund(&mut self, reservation: Reservation) {
        if let Some(at) = self.recent.iter().rposition(|t| *t == reservation.0) {
            self.recent.remove(at);
        }
        let interval = self.interval();
        self.full_at = self
            .full_at
            .and_then(|full_at| full_at.checked_sub(interval));
    }

    /// Takes one failed call at `now` from the budget.
    fn charge(&mut self, now: Instant) {
        let start = self.full_at.filter(|full_at| *full_at > now).unwrap_or(now);
        self.full_at = Some(start + self.interval());
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= MINUTE)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        if self.recent.len() > self.per_minute as usize {
            self.recent.pop_front();
        }
    }
}

/// A call taken from the budget before it was sent.
#[derive(Debug)]
#[must_use = "a reservation is kept, as a failed call, unless it is refunded"]
pub(crate) struct Reservation(Instant);

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_full_budget_allows_a_burst_then_one_call_per_interval() {
        let t0 = Instant::now();
        let mut budget = CallBudget::new(10, 3);
        for _ in 0..3 {
            assert_eq!(budget.wait_at(t0), None);
            let _ = budget.reserve(t0);
        }
        assert_eq!(budget.wait_at(t0), Some(S(6)));
        assert_eq!(budget.wait_at(t0 + S(5)), Some(S(1)));
        assert_eq!(budget.wait_at(t0 + S(6)), None);
        let _ = budget.reserve(t0 + S(6));
        assert_eq!(budget.wait_at(t0 + S(6)), Some(S(6)));
    }

    #[test]
    fn no_minute_ever_holds_more_than_the_limit() {
        for (per_minute, burst) in [(10, 3), (10, 10), (5, 20), (1, 1), (60, 5)] {
            let t0 = Instant::now();
            let mut budget = CallBudget::new(per_minute, burst);
            let mut calls = Vec::new();
            for tenth in 0..6000u64 {
                let now = t0 + Duration::from_millis(tenth * 100);
                if budget.wait_at(now).is_none() {
                    let _failed = budget.reserve(now);
                    calls.push(now);
                }
            }
            for (i, start) in calls.iter().enumerate() {
                let in_window = calls[i..]
                    .iter()
                    .take_while(|t| **t < *start + MINUTE)
                    .count();
                assert!(
                    in_window <= per_minute as usize,
                    "{per_minute}/{burst}: {in_window} calls in a minute"
                );
            }
            assert!(
                calls.len() >= (per_minute as usize) * 9,
                "{per_minute}/{burst}"
            );
        }
    }

    #[test]
    fn the_wait_says_exactly_when_the_next_call_is_allowed() {
        let t0 = Instant::now();
        let mut budget = CallBudget::new(2, 2);
        let _ = budget.reserve(t0);
        let _ = budget.reserve(t0 + S(1));
        let wait = budget.wait_at(t0 + S(1)).unwrap();
        assert_eq!(wait, S(59));
        assert!(budget.wait_at(t0 + S(1) + wait).is_none());
    }

    #[test]
    fn a_refunded_call_takes_nothing_and_calls_in_flight_count() {
        let t0 = Instant::now();
        let mut budget = CallBudget::new(10, 3);
        let in_flight: Vec<Reservation> = (0..3).map(|_| budget.reserve(t0)).collect();
        assert_eq!(budget.wait_at(t0), Some(S(6)), "three calls in flight");
        for reservation in in_flight {
            budget.refund(reservation);
        }
        assert_eq!(budget.wait_at(t0), None);
        for _ in 0..3 {
            let _failed = budget.reserve(t0);
        }
        assert_eq!(budget.wait_at(t0), Some(S(6)));
    }

    #[test]
    fn two_calls_are_allowed_while_the_burst_has_two_left() {
        let t0 = Instant::now();
        let mut budget = CallBudget::new(10, 3);
        assert!(budget.allows_two_at(t0));
        let _failed = budget.reserve(t0);
        assert!(budget.allows_two_at(t0));
        let _failed = budget.reserve(t0);
        assert!(!budget.allows_two_at(t0));
        assert_eq!(budget.wait_at(t0), None, "one call is still allowed");
    }

    #[test]
    fn an_idle_budget_fills_up_again() {
        let t0 = Instant::now();
        let mut budget = CallBudget::new(10, 3);
        for _ in 0..3 {
            let _ = budget.reserve(t0);
        }
        let later = t0 + S(3600);
        for _ in 0..3 {
            assert_eq!(budget.wait_at(later), None);
            let _ = budget.reserve(later);
        }
        assert!(budget.wait_at(later).is_some());
    }
}
