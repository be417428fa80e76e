//! The simulated IQM: accounts, their tokens, the rate limit and the faults, behind the two
//! doors a replica knows. [`SimAuthApi`] is IQM's auth endpoints (the layer's `AuthApi`);
//! [`SimApiEndpoint`] is the rest of the API, the last middleware of a replica's client, which
//! answers 200, 401 or 429 without a network.
//!
//! What IQM does here, as an OAuth server would:
//! - a login opens a token family: an access token that lives `lifetime`, and a refresh token;
//! - a refresh rotates the refresh token (the presented one is spent) unless the seed says IQM
//!   does not rotate; a spent refresh token presented again is recorded (an invariant breaks)
//!   and, if the seed says so, revokes its whole family;
//! - a logout invalidates the access token it was called with;
//! - 20 calls a minute per account, auth and API counted together; past it, 429 with
//!   Retry-After;
//! - fault windows per account (an outage that errors, hangs or answers slowly, answers lost
//!   after IQM acted, refusals inside a 200, a forced 429), revocations, and a trap that kills
//!   the replica whose auth call arrives next (a crash mid-renewal).

use std::collections::{BTreeMap, VecDeque};
use std::future::pending;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::StatusCode;
use http::header::AUTHORIZATION;
use iqm_auth::{AuthApi, AuthEndpoint, AuthError, OW_ID_HEADER, Secret, TokenSet};
use parking_lot::Mutex;
use reqwest::ResponseBuilderExt;
use reqwest_middleware::{Middleware, Next};
use tokio::time::Instant;

use crate::Sim;
use crate::invariants::Invariant;

/// IQM's rate limit: calls per account per minute, auth and API together.
pub const RATE_LIMIT: usize = 20;
const MINUTE: Duration = Duration::from_secs(60);

/// The request header that names a simulated request, so IQM can tell the checker about it.
pub const REQUEST_ID_HEADER: &str = "x-sim-request";

/// Who sends a call: a replica, in one of its lives (a restart is a new incarnation).
#[derive(Debug, Clone)]
pub struct Who {
    pub replica: usize,
    pub incarnation: u32,
    pub account: usize,
    pub alive: Arc<AtomicBool>,
}

impl Who {
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }
    pub fn label(&self) -> String {
        format!("r{}.{}", self.replica, self.incarnation)
    }
}

/// How IQM's auth endpoints behave for an account during a fault window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFault {
    /// 500, 502 or 503 (some with Retry-After), IQM does nothing.
    Errors,
    /// No answer ever; IQM does nothing.
    Hangs,
    /// IQM acts, and answers after 0.5 to 8 s (past the layer's 5 s `auth_timeout` the answer
    /// is lost).
    Slow,
    /// IQM acts, and the answer is lost: no answer, a gateway's 504, or a 200 cut short.
    LostAfterActing,
    /// `"success": false` inside a 200: a refusal.
    RefusesIn200,
    /// 429 with Retry-After on every call, API calls included.
    RateLimited,
}

impl AuthFault {
    pub fn name(self) -> &'static str {
        match self {
            Self::Errors => "iqm outage: errors",
            Self::Hangs => "iqm outage: hangs",
            Self::Slow => "iqm outage: slow answers",
            Self::LostAfterActing => "iqm answer lost after acting",
            Self::RefusesIn200 => "iqm refusal inside a 200",
            Self::RateLimited => "iqm 429 window",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// Logged out by this replica incarnation.
    Logout { replica: usize, incarnation: u32 },
    /// IQM revoked the account's tokens (an operator, a password change).
    Revocation,
    /// A spent refresh token of its family was presented again.
    Reuse,
}

#[derive(Debug)]
struct AccessToken {
    account: usize,
    family: u64,
    expires_at: Instant,
    /// When (in event order) the auth call that obtained it was sent (for the logout fence).
    call_sent: u64,
    revoked: Option<Revoked>,
}

#[derive(Debug)]
struct RefreshToken {
    account: usize,
    family: u64,
    /// Presented and rotated away: presenting it again is a reuse.
    spent: bool,
    /// Revoked without having been presented: refused, but no reuse.
    revoked: bool,
}

#[derive(Debug)]
pub struct Account {
    pub email: String,
    pub password: String,
    pub ow_id: u64,
}

/// A trap: the next auth call of one of the account's replicas kills that replica; IQM acts on
/// the call first if `acted`.
#[derive(Debug, Clone, Copy)]
pub struct CrashTrap {
    pub refresh_only: bool,
    pub acted: bool,
}

/// What happens while a stalled auth call is in flight (the runner does it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallAction {
    /// The replica whose call is stalled logs out.
    LogoutSelf,
    /// Another replica of the account logs out.
    LogoutOther,
    /// Every lease runs out, IQM revokes the account's access tokens, and every replica of
    /// the account sends a request: others take the lease while the holder still works.
    ExpireLeasesAndStorm,
}

/// A stalled call fired: (account, replica whose call it is, what happens now).
pub type Stalled = (usize, usize, StallAction);

#[derive(Debug)]
struct IqmState {
    accounts: Vec<Account>,
    access: BTreeMap<String, AccessToken>,
    refresh: BTreeMap<String, RefreshToken>,
    next_token: u64,
    /// Every call per account in the last minute, for the rate limit.
    calls: Vec<VecDeque<Instant>>,
    /// Fault windows per account: (from, until, fault).
    faults: Vec<Vec<(Instant, Instant, AuthFault)>>,
    traps: Vec<Option<CrashTrap>>,
    stalls: Vec<Option<StallAction>>,
    spared: Option<String>,
}

/// The simulated IQM.
#[derive(Debug)]
pub struct Iqm {
    sim: Arc<Sim>,
    state: Mutex<IqmState>,
    /// API calls waiting for [`serve_api`](Self::serve_api).
    api_inbox: Mutex<Vec<ApiCall>>,
    api_wake: tokio::sync::Notify,
    /// Where a stalled call tells the runner to act.
    stalled: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Stalled>>>,
    pub lifetime: Duration,
    pub rotates: bool,
    pub revokes_family_on_reuse: bool,
}

/// What IQM does with an auth call.
enum Plan {
    Answer(Result<TokenSet, AuthError>),
    After(Duration, Result<TokenSet, AuthError>),
    Hang,
    /// The caller dies with the call in flight.
    Crash,
}

#[derive(Debug)]
enum Call {
    Login,
    Refresh(String),
    Logout(String),
}

/// A refusal as the layer's HTTP client would report it. (IQM's message is left out:
/// `IqmMessage` cannot be built outside the crate, and nothing here reads it.)
fn rejected(
    endpoint: AuthEndpoint,
    status: u16,
    _error: &str,
    retry_after: Option<Duration>,
) -> AuthError {
    AuthError::Rejected {
        endpoint,
        status: StatusCode::from_u16(status).expect("a valid status"),
        messages: Vec::new(),
        retry_after,
    }
}

impl Iqm {
    pub fn new(
        sim: Arc<Sim>,
        accounts: Vec<Account>,
        lifetime: Duration,
        rotates: bool,
        revokes_family_on_reuse: bool,
    ) -> Self {
        let n = accounts.len();
        Self {
            sim,
            state: Mutex::new(IqmState {
                accounts,
                access: BTreeMap::new(),
                refresh: BTreeMap::new(),
                next_token: 1,
                calls: vec![VecDeque::new(); n],
                faults: vec![Vec::new(); n],
                traps: vec![None; n],
                stalls: vec![None; n],
                spared: None,
            }),
            stalled: Mutex::new(None),
            api_inbox: Mutex::new(Vec::new()),
            api_wake: tokio::sync::Notify::new(),
            lifetime,
            rotates,
            revokes_family_on_reuse,
        }
    }

    pub fn credentials(&self, account: usize) -> (String, String, u64) {
        let s = self.state.lock();
        let a = &s.accounts[account];
        (a.email.clone(), a.password.clone(), a.ow_id)
    }

    pub fn add_fault(&self, account: usize, from: Instant, until: Instant, fault: AuthFault) {
        self.state.lock().faults[account].push((from, until, fault));
    }

    pub fn on_stall(&self, tell: tokio::sync::mpsc::UnboundedSender<Stalled>) {
        *self.stalled.lock() = Some(tell);
    }

    /// The next login or refresh of the account is held 3 s after IQM acted on it, and
    /// `action` happens meanwhile.
    pub fn arm_stall(&self, account: usize, action: StallAction) {
        self.state.lock().stalls[account] = Some(action);
    }

    /// The faults are over: traps not yet sprung are taken away.
    pub fn disarm(&self) {
        let mut s = self.state.lock();
        s.traps.iter_mut().for_each(|t| *t = None);
        s.stalls.iter_mut().for_each(|t| *t = None);
    }

    pub fn arm_crash(&self, account: usize, trap: CrashTrap) {
        self.state.lock().traps[account] = Some(trap);
    }

    /// Revokes every live access token of the account, and with `refresh` its refresh tokens;
    /// with `spare`, not the token the held call just obtained.
    pub fn revoke(&self, account: usize, refresh: bool) -> usize {
        self.revoke_sparing(account, refresh, false)
    }

    pub fn revoke_sparing(&self, account: usize, refresh: bool, spare: bool) -> usize {
        let mut s = self.state.lock();
        let spared = if spare { s.spared.take() } else { None };
        let mut n = 0;
        for (_, token) in s.access.iter_mut().filter(|(k, t)| {
            t.account == account && t.revoked.is_none() && Some(*k) != spared.as_ref()
        }) {
            token.revoked = Some(Revoked::Revocation);
            n += 1;
        }
        if refresh {
            for token in s.refresh.values_mut().filter(|t| t.account == account) {
                token.revoked = true;
            }
        }
        n
    }

    fn fault_at(s: &IqmState, account: usize, now: Instant) -> Option<AuthFault> {
        s.faults[account]
            .iter()
            .rev()
            .find(|(from, until, _)| *from <= now && now < *until)
            .map(|(_, _, fault)| *fault)
    }

    /// Counts a call against the account's rate limit; `Some(retry_after)` if it is over.
    fn rate_limited(&self, s: &mut IqmState, account: usize, now: Instant) -> Option<Duration> {
        let calls = &mut s.calls[account];
        while calls
            .front()
            .is_some_and(|t| now.duration_since(*t) >= MINUTE)
        {
            calls.pop_front();
        }
        calls.push_back(now);
        (calls.len() > RATE_LIMIT).then(|| {
            let oldest = calls[calls.len() - RATE_LIMIT - 1];
            (oldest + MINUTE)
                .duration_since(now)
                .max(Duration::from_secs(1))
        })
    }

    fn issue(
        &self,
        s: &mut IqmState,
        account: usize,
        family: Option<u64>,
        sent_seq: u64,
        now: Instant,
    ) -> (String, u64) {
        let id = s.next_token;
        s.next_token += 1;
        let access = format!("at-{id}");
        s.access.insert(
            access.clone(),
            AccessToken {
                account,
                family: family.unwrap_or(id),
                expires_at: now + self.lifetime,
                call_sent: sent_seq,
                revoked: None,
            },
        );
        (access, family.unwrap_or(id))
    }

    fn new_refresh(s: &mut IqmState, account: usize, family: u64) -> String {
        let id = s.next_token;
        s.next_token += 1;
        let token = format!("rt-{id}");
        s.refresh.insert(
            token.clone(),
            RefreshToken {
                account,
                family,
                spent: false,
                revoked: false,
            },
        );
        token
    }

    /// IQM receives an auth call and decides (and does) what it does with it.
    fn receive(&self, who: &Who, call: &Call, sent: u64) -> Plan {
        let mut s = self.state.lock();
        let now = Instant::now();
        let account = who.account;
        let endpoint = match call {
            Call::Login => AuthEndpoint::Login,
            Call::Refresh(_) => AuthEndpoint::Refresh,
            Call::Logout(_) => AuthEndpoint::Logout,
        };
        let mut crash = false;
        if let Some(trap) = s.traps[account] {
            if !matches!(call, Call::Logout(_))
                && (!trap.refresh_only || matches!(call, Call::Refresh(_)))
            {
                s.traps[account] = None;
                who.alive.store(false, Ordering::Relaxed);
                self.sim.cover(if trap.acted {
                    "crash mid auth call, IQM acted"
                } else {
                    "crash mid auth call, before IQM"
                });
                self.sim.event(format!(
                    "{} dies with its {endpoint} call in flight (IQM acts: {})",
                    who.label(),
                    trap.acted
                ));
                if !trap.acted {
                    return Plan::Crash;
                }
                crash = true;
            }
        }
        let fault = Self::fault_at(&s, account, now);
        if fault.is_none() && !matches!(call, Call::Logout(_)) {
            if let Some(action) = s.stalls[account].take() {
                if self.rate_limited(&mut s, account, now).is_none() {
                    let answer = self.act(&mut s, who, call, sent, now);
                    // The held call's own token is spared by the storm's revocation (a
                    // revocation racing a renewal is `revocations_in_succession`).
                    s.spared = answer
                        .as_ref()
                        .ok()
                        .map(|set| set.access_token.expose().to_owned());
                    self.sim.cover("auth call stalled while the fleet moves on");
                    self.sim.event(format!(
                        "{}'s {endpoint} call is held 3s: {action:?}",
                        who.label()
                    ));
                    if let Some(tell) = &*self.stalled.lock() {
                        let _ = tell.send((account, who.replica, action));
                    }
                    return Plan::After(Duration::from_secs(3), answer);
                }
            }
        }
        let mut rng = self.sim.rng.lock();
        let plan = match fault {
            Some(AuthFault::Hangs) => Plan::Hang,
            Some(AuthFault::Errors) => {
                let status = [500, 502, 503][rng.below(3) as usize];
                let retry = (status == 503 && rng.chance(0.3))
                    .then(|| Duration::from_secs(rng.range(1, 10)));
                Plan::Answer(Err(rejected(
                    endpoint,
                    status,
                    "Service unavailable",
                    retry,
                )))
            }
            Some(AuthFault::RefusesIn200) if !matches!(call, Call::Logout(_)) => {
                Plan::Answer(Err(rejected(
                    endpoint,
                    200,
                    "User is not allowed to access provided customer",
                    None,
                )))
            }
            Some(AuthFault::RateLimited) => {
                let retry = rng
                    .chance(0.7)
                    .then(|| Duration::from_secs(rng.range(5, 60)));
                self.sim.checker.lock().saw_429(account, now);
                Plan::Answer(Err(rejected(endpoint, 429, "Too Many Requests", retry)))
            }
            _ => {
                drop(rng);
                if let Some(retry) = self.rate_limited(&mut s, account, now) {
                    self.sim.checker.lock().saw_429(account, now);
                    self.sim.cover("iqm rate limit hit (429)");
                    Plan::Answer(Err(rejected(
                        endpoint,
                        429,
                        "Too Many Requests",
                        Some(retry),
                    )))
                } else {
                    let answer = self.act(&mut s, who, call, sent, now);
                    let mut rng = self.sim.rng.lock();
                    match fault {
                        Some(AuthFault::Slow) => {
                            Plan::After(Duration::from_millis(rng.range(500, 8000)), answer)
                        }
                        Some(AuthFault::LostAfterActing) if answer.is_ok() => match rng.below(3) {
                            0 => Plan::Hang,
                            1 => {
                                Plan::Answer(Err(rejected(endpoint, 504, "Gateway Timeout", None)))
                            }
                            _ => Plan::Answer(Err(AuthError::InvalidResponse {
                                endpoint,
                                status: StatusCode::OK,
                                problem: "the body is truncated".to_owned(),
                            })),
                        },
                        _ => Plan::Answer(answer),
                    }
                }
            }
        };
        if crash { Plan::Crash } else { plan }
    }

    /// IQM acts on a call that got through.
    fn act(
        &self,
        s: &mut IqmState,
        who: &Who,
        call: &Call,
        sent: u64,
        now: Instant,
    ) -> Result<TokenSet, AuthError> {
        let account = who.account;
        match call {
            Call::Login => {
                let (access, family) = self.issue(s, account, None, sent, now);
                let refresh = Self::new_refresh(s, account, family);
                self.sim.event(format!(
                    "iqm: login by {} -> {access} {refresh}",
                    who.label()
                ));
                self.sim.cover("iqm login issued");
                let mut set = TokenSet::new(access, self.lifetime);
                set.refresh_token = Some(Secret::new(refresh));
                set.ow_id = Some(s.accounts[account].ow_id);
                Ok(set)
            }
            Call::Refresh(presented) => {
                let Some(known) = s.refresh.get(presented) else {
                    self.sim.event(format!(
                        "iqm: refresh by {} with unknown {presented}: invalid_grant",
                        who.label()
                    ));
                    return Err(rejected(AuthEndpoint::Refresh, 400, "invalid_grant", None));
                };
                let (owner, family, spent, revoked) =
                    (known.account, known.family, known.spent, known.revoked);
                if owner != account {
                    self.sim.violation(
                        Invariant::ForeignToken,
                        format!(
                            "{} presented refresh token {presented} of account {owner}",
                            who.label()
                        ),
                    );
                }
                if spent {
                    let revoked_family = self.revokes_family_on_reuse;
                    if self.sim.checker.lock().unaware_of_lost_writes(who) {
                        // The guarantee needs Redis to keep the writes it acknowledged: a
                        // replica never told of the generations a rollback lost cannot know.
                        self.sim
                            .cover("spent refresh token after a rollback the replica never saw");
                        self.sim.event(format!(
                            "iqm: {} presented the spent refresh token {presented}, excused: redis lost a generation it was never told of",
                            who.label()
                        ));
                    } else {
                        self.sim.violation(
                            Invariant::SpentRefreshToken,
                            format!(
                                "{} presented the spent refresh token {presented}",
                                who.label()
                            ),
                        );
                    }
                    if revoked_family {
                        for t in s
                            .access
                            .values_mut()
                            .filter(|t| t.family == family && t.revoked.is_none())
                        {
                            t.revoked = Some(Revoked::Reuse);
                        }
                        for t in s.refresh.values_mut().filter(|t| t.family == family) {
                            t.revoked = true;
                        }
                    }
                    return Err(rejected(AuthEndpoint::Refresh, 400, "invalid_grant", None));
                }
                if revoked {
                    self.sim.event(format!(
                        "iqm: refresh by {} with revoked {presented}: invalid_grant",
                        who.label()
                    ));
                    self.sim.cover("iqm refresh refused: revoked");
                    return Err(rejected(AuthEndpoint::Refresh, 400, "invalid_grant", None));
                }
                let (access, _) = self.issue(s, account, Some(family), sent, now);
                let refresh = if self.rotates {
                    s.refresh.get_mut(presented).expect("known").spent = true;
                    Self::new_refresh(s, account, family)
                } else {
                    presented.clone()
                };
                self.sim.event(format!(
                    "iqm: refresh by {} of {presented} -> {access} {refresh}",
                    who.label()
                ));
                self.sim.cover(if self.rotates {
                    "iqm refresh rotated"
                } else {
                    "iqm refresh, not rotated"
                });
                let mut set = TokenSet::new(access, self.lifetime);
                set.refresh_token = Some(Secret::new(refresh));
                Ok(set)
            }
            Call::Logout(access) => {
                if let Some(token) = s.access.get_mut(access) {
                    if token.revoked.is_none() {
                        token.revoked = Some(Revoked::Logout {
                            replica: who.replica,
                            incarnation: who.incarnation,
                        });
                    }
                }
                self.sim
                    .event(format!("iqm: logout by {} of {access}", who.label()));
                Ok(TokenSet::new("", Duration::ZERO))
            }
        }
    }

    /// An API call (anything but the auth endpoints): 200, 401 or 429, and every check of a
    /// token sent.
    fn api_call(&self, call: &ApiCall) -> (StatusCode, Option<Duration>) {
        let ApiCall {
            who,
            id,
            bearer,
            ow_id,
            arrival: now,
            ..
        } = call;
        let (id, now, ow_id) = (*id, *now, *ow_id);
        let bearer = bearer.clone();
        let mut s = self.state.lock();
        let account = who.account;
        let attempt = self.sim.checker.lock().attempt(id);
        let started = attempt.map(|(started, _)| started);
        if let Some((_, n)) = attempt.filter(|(_, n)| *n > 2) {
            self.sim.violation(
                Invariant::RequestsSucceed,
                format!(
                    "req{id} from {} was sent {n} times (one replay at most)",
                    who.label()
                ),
            );
        }
        if Self::fault_at(&s, account, now) == Some(AuthFault::RateLimited) {
            self.sim.checker.lock().saw_429(account, now);
            return (StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(30)));
        }
        if let Some(retry) = self.rate_limited(&mut s, account, now) {
            self.sim.checker.lock().saw_429(account, now);
            self.sim.cover("iqm rate limit hit (429)");
            self.sim
                .event(format!("api: req{id} from {} -> 429", who.label()));
            return (StatusCode::TOO_MANY_REQUESTS, Some(retry));
        }
        let Some(bearer) = bearer else {
            self.sim.violation(
                Invariant::LiveToken,
                format!("req{id} from {} carries no token", who.label()),
            );
            return (StatusCode::UNAUTHORIZED, None);
        };
        let Some(token) = s.access.get(&bearer) else {
            self.sim.violation(
                Invariant::LiveToken,
                format!(
                    "req{id} from {} carries {bearer}, which IQM never issued",
                    who.label()
                ),
            );
            return (StatusCode::UNAUTHORIZED, None);
        };
        let first_use = self.sim.checker.lock().first_use(who, &bearer);
        let own_ow_id = s.accounts[account].ow_id;
        if token.account != account || ow_id != Some(own_ow_id) {
            self.sim.violation(
                Invariant::ForeignToken,
                format!("req{id} from {} (account {account}) carries {bearer} of account {} with owId {ow_id:?}", who.label(), token.account),
            );
        }
        if let Some(started) = started {
            if let Some(logout) =
                self.sim
                    .checker
                    .lock()
                    .fence_for(who.replica, who.incarnation, started)
            {
                if token.call_sent < logout {
                    self.sim.violation(
                        Invariant::LiveToken,
                        format!("req{id} from {} started after its logout returned but carries {bearer}, obtained by a call sent before that logout began (logout fence)", who.label()),
                    );
                }
            }
        }
        let status = if token.expires_at <= now {
            self.sim.violation(
                Invariant::LiveToken,
                format!(
                    "req{id} from {} carries {bearer}, expired {:?} ago",
                    who.label(),
                    now.duration_since(token.expires_at)
                ),
            );
            StatusCode::UNAUTHORIZED
        } else if let Some(revoked) = token.revoked {
            // The layer learns of a revocation from this very 401: it could not know before.
            // (A token its own logout ended is the logout fence's business, above.)
            if first_use {
                self.sim.checker.lock().revoked_unseen(id);
            }
            self.sim.cover(match revoked {
                Revoked::Logout { .. } => "api 401: token logged out",
                Revoked::Revocation => "api 401: token revoked",
                Revoked::Reuse => "api 401: family revoked after reuse",
            });
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        };
        self.sim.event(format!(
            "api: req{id} from {} with {bearer} -> {}",
            who.label(),
            status.as_u16()
        ));
        (status, None)
    }

    /// The API server: calls that arrive at one instant are answered 1 ms later (the network),
    /// in the order of their request ids, each as of its arrival. Tokio wakes the callers one
    /// renewal releases in an order of its own (see `Trace`); answering them in a fixed order,
    /// and waking them in that order, keeps the rate limit's choice of whom to refuse, and
    /// everything after, the seed's alone.
    pub async fn serve_api(self: Arc<Self>) {
        loop {
            self.api_wake.notified().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
            let mut calls = std::mem::take(&mut *self.api_inbox.lock());
            calls.sort_by_key(|c| (c.arrival, c.id, c.attempt));
            for call in calls {
                let answer = self.api_call(&call);
                let _ = call.reply.send(answer);
            }
        }
    }

    /// The access token the account's newest live set would use, for the convergence check.
    pub fn is_live(&self, access: &str) -> bool {
        let s = self.state.lock();
        s.access
            .get(access)
            .is_some_and(|t| t.revoked.is_none() && t.expires_at > Instant::now())
    }
}

/// An API call on its way to [`Iqm::serve_api`].
#[derive(Debug)]
struct ApiCall {
    who: Who,
    id: u64,
    attempt: u64,
    bearer: Option<String>,
    ow_id: Option<u64>,
    arrival: Instant,
    reply: tokio::sync::oneshot::Sender<(StatusCode, Option<Duration>)>,
}

/// IQM's auth endpoints as one replica incarnation reaches them.
#[derive(Debug)]
pub struct SimAuthApi {
    pub iqm: Arc<Iqm>,
    pub who: Who,
}

/// Tells the checker how an auth call ended: a call dropped before its answer (the layer's
/// timeout) failed.
struct Outcome<'a> {
    api: &'a SimAuthApi,
    endpoint: AuthEndpoint,
    sent: Instant,
    settled: bool,
}

impl Outcome<'_> {
    fn settle(&mut self, ok: bool, what: &str) {
        self.settled = true;
        let api = self.api;
        if !api.who.alive() {
            return;
        }
        api.iqm.sim.event(format!(
            "{} {} call -> {what}",
            api.who.label(),
            self.endpoint
        ));
        if self.endpoint != AuthEndpoint::Logout {
            api.iqm
                .sim
                .checker
                .lock()
                .auth_call(&api.iqm.sim, &api.who, self.sent, ok);
        }
    }
}

impl Drop for Outcome<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.settle(false, "abandoned without an answer");
        }
    }
}

impl SimAuthApi {
    async fn call(&self, call: Call) -> Result<TokenSet, AuthError> {
        if !self.who.alive() {
            return pending().await;
        }
        let sent = Instant::now();
        let plan = self.iqm.receive(&self.who, &call, self.iqm.sim.seq());
        let endpoint = match call {
            Call::Login => AuthEndpoint::Login,
            Call::Refresh(_) => AuthEndpoint::Refresh,
            Call::Logout(_) => AuthEndpoint::Logout,
        };
        let mut outcome = Outcome {
            api: self,
            endpoint,
            sent,
            settled: false,
        };
        let answer = match plan {
            Plan::Answer(answer) => answer,
            Plan::After(delay, answer) => {
                tokio::time::sleep(delay).await;
                answer
            }
            Plan::Hang => pending().await,
            Plan::Crash => {
                outcome.settled = true;
                return pending().await;
            }
        };
        if !self.who.alive() {
            outcome.settled = true;
            return pending().await;
        }
        match &answer {
            Ok(_) => outcome.settle(true, "ok"),
            Err(err) => outcome.settle(false, &format!("{err}")),
        }
        answer
    }
}

#[async_trait::async_trait]
impl AuthApi for SimAuthApi {
    async fn login(&self, email: &str, password: &Secret) -> Result<TokenSet, AuthError> {
        let (own_email, own_password, _) = self.iqm.credentials(self.who.account);
        if email != own_email || password.expose() != own_password {
            self.iqm.sim.violation(
                Invariant::ForeignToken,
                format!("{} logged in as another user", self.who.label()),
            );
        }
        self.call(Call::Login).await
    }

    async fn refresh(&self, refresh_token: &Secret) -> Result<TokenSet, AuthError> {
        self.call(Call::Refresh(refresh_token.expose().to_owned()))
            .await
    }

    async fn logout(&self, access_token: &Secret) -> Result<(), AuthError> {
        self.call(Call::Logout(access_token.expose().to_owned()))
            .await
            .map(drop)
    }

    async fn sign_up(&self, _email: &str, _password: &Secret) -> Result<TokenSet, AuthError> {
        Err(rejected(AuthEndpoint::SignUp, 403, "not invited", None))
    }
}

/// The rest of IQM's API, as the last middleware of a replica's client: it never calls the
/// network, and answers from the simulated IQM.
#[derive(Debug)]
pub struct SimApiEndpoint {
    pub iqm: Arc<Iqm>,
    pub who: Who,
}

#[async_trait::async_trait]
impl Middleware for SimApiEndpoint {
    async fn handle(
        &self,
        request: reqwest::Request,
        _extensions: &mut http::Extensions,
        _next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        if !self.who.alive() {
            return pending().await;
        }
        let headers = request.headers();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let call = ApiCall {
            who: self.who.clone(),
            id: headers
                .get(REQUEST_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            attempt: u64::from(headers.contains_key("x-sim-replayed")),
            bearer: headers
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_owned),
            ow_id: headers
                .get(OW_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok()),
            arrival: Instant::now(),
            reply,
        };
        self.iqm.api_inbox.lock().push(call);
        self.iqm.api_wake.notify_one();
        let Ok((status, retry_after)) = answer.await else {
            return pending().await;
        };
        let mut answer = http::Response::builder()
            .status(status)
            .url(request.url().clone());
        if let Some(retry) = retry_after {
            answer = answer.header(http::header::RETRY_AFTER, retry.as_secs().to_string());
        }
        let body = if status == StatusCode::OK {
            r#"{"success":true,"data":[]}"#
        } else {
            r#"{"success":false,"errorObjects":[{"error":"Unauthorized"}]}"#
        };
        Ok(reqwest::Response::from(
            answer.body(body).expect("a valid response"),
        ))
    }
}
