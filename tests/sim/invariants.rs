//! The promises checked after every step, and what the checker remembers to check them.
//!
//! IQM (`iqm.rs`) reports what it sees as it sees it: every auth call and how it ended, every
//! token sent to the API. The runner reports requests, logouts, crashes and faults. A broken
//! promise is recorded with its [`Invariant`]; the runner stops the run at the end of the step.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::Sim;
use crate::iqm::Who;

/// Failed auth calls allowed per account, fleet-wide (and per replica), in any minute.
pub const FAILED_CALLS_PER_MINUTE: usize = 10;
/// Successful auth calls no event explains, allowed per account in any hour.
pub const SUCCESS_SLACK_PER_HOUR: usize = 2;
/// How long an event (a revocation, a logout, a crash) may take to cost its one auth call.
pub const EVENT_CREDIT_LIFE: Duration = Duration::from_secs(30 * 60);
/// The longest a request may take: two renewals (the first, and one after a 401), each within
/// the lease TTL plus the acquisition budget, and a few coordinator calls.
pub const HANG_BOUND: Duration = Duration::from_secs(180);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invariant {
    SpentRefreshToken,
    ForeignToken,
    LiveToken,
    FailedCallBudget,
    OneAuthCallPerEvent,
    RequestsSucceed,
    Converge,
    NoPanicNoHang,
}

impl Invariant {
    pub fn name(self) -> &'static str {
        match self {
            Self::SpentRefreshToken => "no spent refresh token presented",
            Self::ForeignToken => "no request carries a token of another account",
            Self::LiveToken => {
                "every token sent was live at IQM when sent (a revocation not yet seen excepted)"
            }
            Self::FailedCallBudget => {
                "at most 10 failed auth calls per account in any minute (per replica, and fleet-wide; plus 2 per replica fleet-wide while Redis is unusable)"
            }
            Self::OneAuthCallPerEvent => {
                "at most one successful auth call per event per account, fleet-wide (slack: 2 an hour)"
            }
            Self::RequestsSucceed => {
                "every request made while IQM is up succeeds, directly or after one replay"
            }
            Self::Converge => "after faults stop, every replica converges on one shared token",
            Self::NoPanicNoHang => "no panic, no hang",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: Invariant,
    pub detail: String,
    pub at: Duration,
}

/// One auth call an event may cost.
#[derive(Debug, Clone)]
struct Credit {
    from: Instant,
    until: Instant,
    why: &'static str,
    left: u32,
}

#[derive(Debug)]
struct RequestRecord {
    replica: usize,
    incarnation: u32,
    account: usize,
    started: Instant,
    started_seq: u64,
    attempts: u32,
    /// Its last attempt carried a token IQM had revoked before this replica ever sent it.
    revoked_unseen: bool,
}

/// An instant and the order of the event within it.
type Moment = (Instant, u64);

/// A logout: when it began, and when it returned (if it has).
type Logout = (Moment, Option<Moment>);

/// What the checker knows.
#[derive(Debug)]
pub struct Checker {
    lifetime: Duration,
    requests: BTreeMap<u64, RequestRecord>,
    /// The tokens each replica incarnation has sent.
    sent: BTreeMap<(usize, u32), std::collections::BTreeSet<String>>,
    /// Logouts per replica incarnation: (began, returned), as instants and in event order.
    logouts: BTreeMap<(usize, u32), Vec<Logout>>,
    failed: Vec<Vec<Instant>>,
    failed_by_replica: BTreeMap<(usize, u32), Vec<Instant>>,
    credits: Vec<Vec<Credit>>,
    /// Per account, the expiry of its newest token: the one auth call its renewal may cost.
    expiry_credit: Vec<Option<Credit>>,
    unexplained: Vec<VecDeque<Instant>>,
    /// Per account: intervals in which a failed request is excused, and why.
    disturbed: Vec<Vec<(Instant, Instant, &'static str)>>,
    /// When Redis was unusable (errors, slow or lost answers) or lost its writes (a restart, a
    /// rollback): replicas pace their failed calls on their own share, or the fleet's record
    /// of them is gone, and the fleet-wide bound is doubled for a minute that overlaps.
    redis_unusable: Vec<(Instant, Instant)>,
    /// Per replica incarnation, the highest shared generation Redis answered it with, per epoch.
    seen_by: BTreeMap<(usize, u32), BTreeMap<String, u64>>,
    /// Per epoch, the highest generation a rollback of Redis lost.
    lost: BTreeMap<String, u64>,
    /// Per replica incarnation, per epoch, the highest generation it was told was marked
    /// "refreshing"; and per epoch, the highest generation whose mark a rollback lost.
    marks_seen_by: BTreeMap<(usize, u32), BTreeMap<String, u64>>,
    lost_marks: BTreeMap<String, u64>,
    pub max_latency: Duration,
    pub requests_ok: u64,
    pub requests_failed_excused: u64,
}

impl Checker {
    pub fn new(accounts: usize, lifetime: Duration, start: Instant) -> Self {
        let far = start + Duration::from_secs(400 * 86_400);
        Self {
            lifetime,
            requests: BTreeMap::new(),
            sent: BTreeMap::new(),
            logouts: BTreeMap::new(),
            failed: vec![Vec::new(); accounts],
            failed_by_replica: BTreeMap::new(),
            credits: (0..accounts)
                .map(|_| {
                    vec![Credit {
                        from: start,
                        until: far,
                        why: "cold start",
                        left: 1,
                    }]
                })
                .collect(),
            expiry_credit: vec![None; accounts],
            unexplained: vec![VecDeque::new(); accounts],
            disturbed: vec![Vec::new(); accounts],
            redis_unusable: Vec::new(),
            seen_by: BTreeMap::new(),
            lost: BTreeMap::new(),
            marks_seen_by: BTreeMap::new(),
            lost_marks: BTreeMap::new(),
            max_latency: Duration::ZERO,
            requests_ok: 0,
            requests_failed_excused: 0,
        }
    }

    /// An event that may cost `count` successful auth calls for `account` until `until`.
    pub fn credit(&mut self, account: usize, count: u32, until: Instant, why: &'static str) {
        self.credits[account].push(Credit {
            from: Instant::now(),
            until,
            why,
            left: count,
        });
    }

    /// Redis answered `who` with the shared generation `generation` of `epoch`.
    pub fn saw(&mut self, who: &Who, epoch: &str, generation: u64) {
        let seen = self
            .seen_by
            .entry((who.replica, who.incarnation))
            .or_default()
            .entry(epoch.to_owned())
            .or_default();
        *seen = (*seen).max(generation);
    }

    /// Redis told `who` the set of `generation` in `epoch` is marked "refreshing".
    pub fn saw_mark(&mut self, who: &Who, epoch: &str, generation: u64) {
        let seen = self
            .marks_seen_by
            .entry((who.replica, who.incarnation))
            .or_default()
            .entry(epoch.to_owned())
            .or_default();
        *seen = (*seen).max(generation);
    }

    /// A rollback of Redis lost the "refreshing" mark of the set of `generation` in `epoch`.
    pub fn lost_mark(&mut self, epoch: &str, generation: u64) {
        let lost = self.lost_marks.entry(epoch.to_owned()).or_default();
        *lost = (*lost).max(generation);
    }

    /// A rollback of Redis lost the generations of `epoch` up to `generation`.
    pub fn rolled_back(&mut self, epoch: &str, generation: u64) {
        let lost = self.lost.entry(epoch.to_owned()).or_default();
        *lost = (*lost).max(generation);
    }

    /// Whether `who` was never told of a generation a rollback lost: it cannot know that the
    /// rolled-back set's refresh token was spent (the documented limit of the guarantee, which
    /// needs Redis to keep acknowledged writes).
    pub fn unaware_of_lost_writes(&self, who: &Who) -> bool {
        let seen = self.seen_by.get(&(who.replica, who.incarnation));
        let marks = self.marks_seen_by.get(&(who.replica, who.incarnation));
        let unaware = |seen: Option<&BTreeMap<String, u64>>, lost: &BTreeMap<String, u64>| {
            lost.iter()
                .any(|(epoch, lost)| seen.and_then(|s| s.get(epoch)).copied().unwrap_or(0) < *lost)
        };
        unaware(seen, &self.lost) || unaware(marks, &self.lost_marks)
    }

    /// Redis is unusable from `from` to `until`.
    pub fn redis_unusable(&mut self, from: Instant, until: Instant) {
        self.redis_unusable.push((from, until));
    }

    /// Requests of `account` that fail between `from` and `until` are excused (IQM was not up).
    pub fn disturb(&mut self, account: usize, from: Instant, until: Instant, why: &'static str) {
        self.disturbed[account].push((from, until, why));
    }

    pub fn saw_429(&mut self, account: usize, at: Instant) {
        // The pause after a 429 lasts up to its Retry-After (at most 60 s here), and its failed
        // call stays in the budget for a minute.
        self.disturb(
            account,
            at,
            at + Duration::from_secs(180),
            "IQM answered 429",
        );
    }

    pub fn request_started(&mut self, id: u64, who: &Who, seq: u64) {
        self.requests.insert(
            id,
            RequestRecord {
                replica: who.replica,
                incarnation: who.incarnation,
                account: who.account,
                started: Instant::now(),
                started_seq: seq,
                attempts: 0,
                revoked_unseen: false,
            },
        );
    }

    /// A request reached the API; when it started (in event order), and how many times it has
    /// been sent.
    pub fn attempt(&mut self, id: u64) -> Option<(u64, u32)> {
        let record = self.requests.get_mut(&id)?;
        record.attempts += 1;
        record.revoked_unseen = false;
        Some((record.started_seq, record.attempts))
    }

    /// Whether this replica incarnation sends `token` for the first time.
    pub fn first_use(&mut self, who: &Who, token: &str) -> bool {
        self.sent
            .entry((who.replica, who.incarnation))
            .or_default()
            .insert(token.to_owned())
    }

    /// The attempt of request `id` carried a token revoked before this replica ever sent it:
    /// the layer could not know (its one replay may have been spent on it).
    pub fn revoked_unseen(&mut self, id: u64) {
        if let Some(record) = self.requests.get_mut(&id) {
            record.revoked_unseen = true;
        }
    }

    /// A request ended with `outcome` (the status, or the layer's error).
    pub fn request_finished(&mut self, sim: &Sim, id: u64, outcome: Result<u16, String>) {
        let Some(record) = self.requests.remove(&id) else {
            return;
        };
        let now = Instant::now();
        let took = now.duration_since(record.started);
        self.max_latency = self.max_latency.max(took);
        if took > HANG_BOUND {
            sim.violation(
                Invariant::NoPanicNoHang,
                format!(
                    "req{id} of r{}.{} took {took:?}",
                    record.replica, record.incarnation
                ),
            );
        }
        if outcome == Ok(200) {
            self.requests_ok += 1;
            return;
        }
        let overlaps = |from: Instant, until: Instant| from <= now && record.started <= until;
        let unseen = (record.revoked_unseen && outcome == Ok(401))
            .then_some("its replay carried a token revoked before this replica used it");
        let excuse = unseen
            .or_else(|| {
                self.disturbed[record.account]
                    .iter()
                    .find(|(from, until, _)| overlaps(*from, *until))
                    .map(|(_, _, why)| *why)
            })
            .or_else(|| {
                self.logouts
                    .get(&(record.replica, record.incarnation))
                    .into_iter()
                    .flatten()
                    .any(|(began, returned)| overlaps(began.0, returned.map_or(now, |r| r.0)))
                    .then_some("its own replica logged out meanwhile")
            });
        match excuse {
            Some(why) => {
                self.requests_failed_excused += 1;
                sim.cover(why);
                sim.event(format!("req{id} failed, excused: {why}"));
            }
            None => sim.violation(
                Invariant::RequestsSucceed,
                format!(
                    "req{id} of r{}.{} (account {}) failed after {took:?}: {outcome:?}",
                    record.replica, record.incarnation, record.account
                ),
            ),
        }
    }

    /// Requests still running: one past the hang bound breaks a promise.
    pub fn check_hangs(&self, sim: &Sim, alive: impl Fn(usize, u32) -> bool) {
        let now = Instant::now();
        for (id, record) in &self.requests {
            let took = now.duration_since(record.started);
            if took > HANG_BOUND && alive(record.replica, record.incarnation) {
                sim.violation(
                    Invariant::NoPanicNoHang,
                    format!(
                        "req{id} of r{}.{} has run for {took:?}",
                        record.replica, record.incarnation
                    ),
                );
            }
        }
    }

    /// The requests of a dead replica are gone with it.
    pub fn forget_requests_of(&mut self, replica: usize, incarnation: u32) {
        self.requests
            .retain(|_, r| (r.replica, r.incarnation) != (replica, incarnation));
    }

    pub fn logout_began(&mut self, replica: usize, incarnation: u32, seq: u64) -> usize {
        let logouts = self.logouts.entry((replica, incarnation)).or_default();
        logouts.push(((Instant::now(), seq), None));
        logouts.len() - 1
    }

    pub fn logout_returned(&mut self, replica: usize, incarnation: u32, index: usize, seq: u64) {
        if let Some(logout) = self
            .logouts
            .get_mut(&(replica, incarnation))
            .and_then(|l| l.get_mut(index))
        {
            logout.1 = Some((Instant::now(), seq));
        }
    }

    /// Where (in event order) the last logout of this incarnation that returned before the
    /// event `started` began.
    pub fn fence_for(&self, replica: usize, incarnation: u32, started: u64) -> Option<u64> {
        self.logouts
            .get(&(replica, incarnation))?
            .iter()
            .filter(|(_, returned)| returned.is_some_and(|r| r.1 < started))
            .map(|(began, _)| began.1)
            .max()
    }

    /// An auth call (login or refresh) sent at `sent` by `who` ended, `ok` if its token reached
    /// the layer.
    pub fn auth_call(&mut self, sim: &Sim, who: &Who, sent: Instant, ok: bool) {
        let account = who.account;
        if ok {
            self.succeeded(sim, account);
            return;
        }
        let minute = Duration::from_secs(60);
        let redis_unusable = &self.redis_unusable;
        // Replicas that cannot reach Redis keep to their share of the budget (the budget split
        // between the replicas last seen, at least 2 a minute each, which Redis never hears
        // of): the fleet may spend the budget plus 2 a minute per replica.
        let fleet_bound = |first: Instant| {
            let overlaps = redis_unusable
                .iter()
                .any(|(from, until)| *from <= first + minute && first <= *until + minute);
            if overlaps {
                FAILED_CALLS_PER_MINUTE + 2 * crate::REPLICAS
            } else {
                FAILED_CALLS_PER_MINUTE
            }
        };
        for (calls, scope) in [
            (&mut self.failed[account], "fleet-wide"),
            (
                self.failed_by_replica
                    .entry((who.replica, who.incarnation))
                    .or_default(),
                "per replica",
            ),
        ] {
            let at = calls.partition_point(|t| *t <= sent);
            calls.insert(at, sent);
            if let Some((first, n)) = busiest_minute_around(calls, sent) {
                let bound = if scope == "fleet-wide" {
                    fleet_bound(first)
                } else {
                    FAILED_CALLS_PER_MINUTE
                };
                if n > bound {
                    sim.violation(
                        Invariant::FailedCallBudget,
                        format!("{n} failed auth calls of account {account} ({scope}, {}) in the minute from {}", who.label(), crate::clock(sim, first)),
                    );
                }
            }
        }
    }

    fn succeeded(&mut self, sim: &Sim, account: usize) {
        let now = Instant::now();
        let credits = &mut self.credits[account];
        credits.retain(|c| c.left > 0 && c.until > now);
        let mut expiry = self.expiry_credit[account].take().filter(|c| c.from <= now);
        let best = credits
            .iter_mut()
            .filter(|c| c.from <= now)
            .min_by_key(|c| c.until);
        let why = match (best, expiry.as_mut()) {
            (_, Some(expiry)) => {
                expiry.left = 0;
                Some(expiry.why)
            }
            (Some(credit), None) => {
                credit.left -= 1;
                Some(credit.why)
            }
            (None, None) => None,
        };
        // Every token delivered starts the wait for its own expiry.
        self.expiry_credit[account] = Some(Credit {
            from: now + self.lifetime.mul_f64(0.6),
            until: now + Duration::from_secs(400 * 86_400),
            why: "token expiry",
            left: 1,
        });
        match why {
            Some(why) => sim.event(format!(
                "auth success for account {account}, explained by: {why}"
            )),
            None => {
                let recent = &mut self.unexplained[account];
                while recent
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= HOUR)
                {
                    recent.pop_front();
                }
                recent.push_back(now);
                sim.cover("auth success within the slack");
                if recent.len() > SUCCESS_SLACK_PER_HOUR {
                    let open: Vec<String> = self.credits[account]
                        .iter()
                        .map(|c| {
                            format!("{} x{} until {}", c.why, c.left, crate::clock(sim, c.until))
                        })
                        .collect();
                    sim.violation(
                        Invariant::OneAuthCallPerEvent,
                        format!("{} successful auth calls of account {account} within an hour that no event explains (open credits: {open:?})", recent.len()),
                    );
                }
            }
        }
    }
}

/// The most calls in any minute-long window containing `at`, and where that window starts.
fn busiest_minute_around(calls: &[Instant], at: Instant) -> Option<(Instant, usize)> {
    let lo = calls.partition_point(|t| *t + MINUTE <= at);
    let hi = calls.partition_point(|t| *t < at + MINUTE);
    let window = &calls[lo..hi];
    let mut best: Option<(Instant, usize)> = None;
    let mut end = 0;
    for (i, first) in window.iter().enumerate() {
        while end < window.len() && window[end] < *first + MINUTE {
            end += 1;
        }
        if best.is_none_or(|(_, n)| end - i > n) {
            best = Some((*first, end - i));
        }
    }
    best
}
