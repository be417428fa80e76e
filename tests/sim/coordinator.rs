//! The simulated Redis: the shared session of every account (one scope each), as a
//! `SessionCoordinator` that every replica incarnation reaches through a handle of its own.
//!
//! It keeps the protocol of `RedisSession`'s Lua scripts (a generation that only grows, above
//! the publisher's floor; one lease at a time with a fencing value the replica chose; a
//! "refreshing" mark; publish only under the lease and from the expected generation; expiry as
//! a lifetime on Redis's clock; a fleet-wide record of failures and pause), on simulated time. And it fails as Redis
//! does:
//! - errors (connection refused) and slow commands (past the layer's command limit, dropped
//!   before they are applied);
//! - a command applied whose answer is lost (the caller times out, the write stands);
//! - leases that expire under their holder (a GC pause, a clock jump on the server);
//! - a restart that loses everything (no persistence);
//! - a rollback to an older snapshot (a failover to a replica that had not seen the last
//!   writes).

use std::collections::{BTreeMap, VecDeque};
use std::future::pending;
use std::sync::Arc;
use std::time::Duration;

use iqm_auth::{
    CallAllowance, CoordinatorError, Failure, Lease, Publication, SessionCoordinator, SharedTokens,
    StoredTokens,
};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::Sim;
use crate::iqm::Who;

/// The simulated Redis's lease TTL: the library's default.
pub const LEASE_TTL: Duration = Duration::from_secs(20);
/// How often a snapshot is kept, for rollbacks.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(30);
const SNAPSHOTS_KEPT: usize = 20;

/// How Redis fails during a fault window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoordFault {
    /// Every command fails at once.
    Errors,
    /// Commands take 0.5 to 4 s before they are applied (past 2 s the layer drops them first).
    Slow,
    /// A third of the commands are applied and their answers lost.
    LostAnswers,
}

impl CoordFault {
    pub fn name(self) -> &'static str {
        match self {
            Self::Errors => "redis: errors",
            Self::Slow => "redis: slow commands",
            Self::LostAnswers => "redis: answers lost after applying",
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Scope {
    epoch: String,
    generation: u64,
    /// The set, its expiry and when it was obtained from IQM.
    tokens: Option<(StoredTokens, Instant, Instant)>,
    refreshing: bool,
    paused_until: Option<Instant>,
    failures_in_a_row: u32,
    /// The fleet's budget for failed auth calls: the calls of the last minute not given back,
    /// and when the burst is full again.
    calls: Vec<(String, Instant)>,
    calls_full_at: Option<Instant>,
    /// The replicas that read the session, and when they last did.
    readers: BTreeMap<usize, Instant>,
    lease: Option<(String, Instant)>,
    /// When IQM's rate-limit window, closed by a replica answered 429, opens.
    window: Option<Instant>,
}

impl Scope {
    fn holds(&self, lease: &Lease, now: Instant) -> bool {
        self.lease
            .as_ref()
            .is_some_and(|(fence, until)| *fence == lease.fence && now < *until)
    }
}

#[derive(Debug, Default)]
struct RedisState {
    scopes: BTreeMap<String, Scope>,
    /// How many sessions were made: each new one (after a restart) is a new epoch.
    epochs: u64,
    snapshots: VecDeque<(Instant, BTreeMap<String, Scope>)>,
    faults: Vec<(Instant, Instant, CoordFault)>,
}

impl RedisState {
    /// The state of `scope`, made (in a new epoch) if there is none.
    fn scope(&mut self, scope: &str) -> &mut Scope {
        let epochs = &mut self.epochs;
        self.scopes.entry(scope.to_owned()).or_insert_with(|| {
            *epochs += 1;
            Scope {
                epoch: format!("epoch-{epochs}"),
                ..Scope::default()
            }
        })
    }
}

/// The simulated Redis, shared by every handle.
#[derive(Debug)]
pub struct Redis {
    sim: Arc<Sim>,
    state: Mutex<RedisState>,
    /// A mutation for the simulator's own test of its teeth: publish ignores the generation
    /// (as a coordinator without the check would).
    skip_generation_check: bool,
}

impl Redis {
    pub fn new(sim: Arc<Sim>) -> Self {
        Self {
            sim,
            state: Mutex::default(),
            skip_generation_check: std::env::var("SIM_MUTATE")
                .is_ok_and(|m| m == "publish-generation"),
        }
    }

    pub fn add_fault(&self, from: Instant, until: Instant, fault: CoordFault) {
        self.state.lock().faults.push((from, until, fault));
    }

    /// Every lease runs out now, under its holder.
    pub fn expire_leases(&self) {
        let now = Instant::now();
        for scope in self.state.lock().scopes.values_mut() {
            if let Some((_, until)) = &mut scope.lease {
                *until = now;
            }
        }
    }

    /// Redis restarts without persistence: everything is gone, generations start over.
    pub fn restart(&self) {
        let mut s = self.state.lock();
        // Lost too: a rollback to a snapshot from before the restart brings the old epoch back
        // without its last generations.
        for scope in s.scopes.values() {
            self.sim
                .checker
                .lock()
                .rolled_back(&scope.epoch, scope.generation);
        }
        s.scopes.clear();
    }

    /// A failover to a copy `age` old at most: the writes since are lost. Returns the age of
    /// the snapshot taken.
    pub fn roll_back(&self, pick: u64) -> Option<Duration> {
        let mut s = self.state.lock();
        if s.snapshots.is_empty() {
            return None;
        }
        let i = (pick % s.snapshots.len() as u64) as usize;
        let (at, scopes) = s.snapshots[i].clone();
        for (name, now) in &s.scopes {
            let restored = scopes.get(name);
            if restored.is_none_or(|r| r.epoch != now.epoch || r.generation < now.generation) {
                self.sim
                    .checker
                    .lock()
                    .rolled_back(&now.epoch, now.generation);
            }
            let mark_lost = restored.is_some_and(|r| {
                r.epoch == now.epoch && r.generation == now.generation && !r.refreshing
            });
            if now.refreshing && mark_lost {
                self.sim
                    .checker
                    .lock()
                    .lost_mark(&now.epoch, now.generation);
            }
        }
        s.scopes = scopes;
        Some(Instant::now().duration_since(at))
    }

    /// The shared access token of a scope, for the convergence check.
    pub fn shared_access(&self, scope: &str) -> Option<String> {
        let s = self.state.lock();
        s.scopes
            .get(scope)?
            .tokens
            .as_ref()
            .map(|(t, _, _)| t.access_token.expose().to_owned())
    }

    pub fn scopes(&self) -> Vec<String> {
        self.state.lock().scopes.keys().cloned().collect()
    }

    fn fault_at(&self, now: Instant) -> Option<CoordFault> {
        let s = self.state.lock();
        s.faults
            .iter()
            .rev()
            .find(|(from, until, _)| *from <= now && now < *until)
            .map(|f| f.2)
    }

    fn apply<T>(&self, f: impl FnOnce(&mut RedisState, Instant) -> T) -> T {
        let now = Instant::now();
        let mut s = self.state.lock();
        if s.snapshots
            .back()
            .is_none_or(|(at, _)| now.duration_since(*at) >= SNAPSHOT_EVERY)
        {
            let copy = s.scopes.clone();
            s.snapshots.push_back((now, copy));
            if s.snapshots.len() > SNAPSHOTS_KEPT {
                s.snapshots.pop_front();
            }
        }
        f(&mut s, now)
    }
}

/// A value as the trace shows it: the first part only (a token set prints redacted).
struct Shown<T, U>(T, U);

impl<T: std::fmt::Debug, U> std::fmt::Debug for Shown<T, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One replica incarnation's connection to the simulated Redis.
#[derive(Debug)]
pub struct SimCoordinator {
    pub redis: Arc<Redis>,
    pub who: Who,
}

impl SimCoordinator {
    /// One command: through the fault window if there is one, then applied atomically.
    async fn command<T: std::fmt::Debug>(
        &self,
        name: &str,
        f: impl FnOnce(&mut RedisState, Instant) -> T,
    ) -> Result<T, CoordinatorError> {
        if !self.who.alive() {
            return pending().await;
        }
        let sim = &self.redis.sim;
        let fault = self.redis.fault_at(Instant::now());
        let (lose, delay) = {
            let mut rng = sim.rng.lock();
            match fault {
                Some(CoordFault::Errors) => {
                    sim.event(format!(
                        "redis: {name} by {} -> connection refused",
                        self.who.label()
                    ));
                    return Err(CoordinatorError("connection refused".to_owned()));
                }
                Some(CoordFault::Slow) => {
                    (false, Some(Duration::from_millis(rng.range(500, 4000))))
                }
                Some(CoordFault::LostAnswers) => (rng.chance(0.33), None),
                None => (false, None),
            }
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
            if !self.who.alive() {
                return pending().await;
            }
        }
        let answer = self.redis.apply(f);
        sim.event(format!(
            "redis: {name} by {} -> {answer:?}{}",
            self.who.label(),
            if lose { " (answer lost)" } else { "" }
        ));
        if lose {
            sim.cover("redis answer lost after applying");
            return pending().await;
        }
        Ok(answer)
    }
}

#[async_trait::async_trait]
impl SessionCoordinator for SimCoordinator {
    fn namespace(&self) -> Option<&str> {
        None
    }

    fn lease_ttl(&self) -> Duration {
        LEASE_TTL
    }

    async fn read(&self, scope: &str) -> Result<Option<SharedTokens>, CoordinatorError> {
        let reader = self.who.replica;
        let shared = self
            .command("read", |s, now| {
                let readers = &mut s.scope(scope).readers;
                readers.insert(reader, now);
                readers
                    .retain(|_, at| now.saturating_duration_since(*at) < Duration::from_secs(3600));
                let replicas = readers.len() as u32;
                s.scopes.get(scope).map(|s| {
                    let pause = s
                        .paused_until
                        .map_or(Duration::ZERO, |until| until.saturating_duration_since(now));
                    Shown(
                        (
                            s.generation,
                            s.tokens
                                .as_ref()
                                .map(|(t, _, _)| t.access_token.expose().to_owned()),
                            s.refreshing,
                            pause,
                        ),
                        (
                            s.tokens.clone().map(|(t, expires_at, obtained_at)| {
                                (
                                    t,
                                    expires_at.saturating_duration_since(now),
                                    now.saturating_duration_since(obtained_at),
                                )
                            }),
                            s.failures_in_a_row,
                            s.epoch.clone(),
                            replicas,
                            s.window
                                .map_or(Duration::ZERO, |end| end.saturating_duration_since(now)),
                        ),
                    )
                })
            })
            .await?;
        let sim = &self.redis.sim;
        Ok(shared.map(
            |Shown(
                (generation, _, refreshing, pause),
                (tokens, in_a_row, epoch, replicas, window),
            )| {
                if refreshing {
                    sim.cover("redis read: set marked refreshing");
                }
                if !pause.is_zero() {
                    sim.cover("redis read: fleet paused");
                }
                let lifetimes = tokens.as_ref().map(|(_, left, ago)| (*left, *ago));
                sim.checker.lock().saw(&self.who, &epoch, generation);
                if refreshing {
                    sim.checker.lock().saw_mark(&self.who, &epoch, generation);
                }
                let shared = SharedTokens::new(generation, tokens.map(|(t, _, _)| t), refreshing)
                    .in_epoch(epoch)
                    .paused(pause)
                    .with_failures(in_a_row)
                    .with_replicas(replicas)
                    .rate_limited(window);
                match lifetimes {
                    Some((left, ago)) => shared.expiring_in(left).obtained(ago),
                    None => shared,
                }
            },
        ))
    }

    async fn close_window(
        &self,
        scope: &str,
        for_: Duration,
    ) -> Result<Duration, CoordinatorError> {
        self.command("close_window", |s, now| {
            let state = s.scope(scope);
            let until = state
                .window
                .filter(|end| *end > now + for_)
                .unwrap_or(now + for_);
            state.window = Some(until);
            until.saturating_duration_since(now)
        })
        .await
    }

    async fn try_lease(&self, scope: &str, lease: &Lease) -> Result<bool, CoordinatorError> {
        let taken = self
            .command("try_lease", |s, now| {
                let state = s.scope(scope);
                let held_by_another = state
                    .lease
                    .as_ref()
                    .is_some_and(|(fence, until)| now < *until && *fence != lease.fence);
                if held_by_another {
                    return false;
                }
                state.lease = Some((lease.fence.clone(), now + LEASE_TTL));
                true
            })
            .await?;
        self.redis.sim.cover(if taken {
            "redis lease taken"
        } else {
            "redis lease busy"
        });
        Ok(taken)
    }

    async fn mark_refreshing(
        &self,
        scope: &str,
        lease: &Lease,
        generation: u64,
    ) -> Result<bool, CoordinatorError> {
        let marked = self
            .command("mark_refreshing", |s, now| {
                let state = s.scope(scope);
                let marked = state.holds(lease, now) && state.generation == generation;
                if marked {
                    state.refreshing = true;
                }
                marked
            })
            .await?;
        self.redis.sim.cover(if marked {
            "redis mark_refreshing done"
        } else {
            "redis mark_refreshing refused"
        });
        Ok(marked)
    }

    async fn publish(
        &self,
        scope: &str,
        lease: &Lease,
        publication: &Publication,
    ) -> Result<Option<u64>, CoordinatorError> {
        let skip = self.redis.skip_generation_check;
        let expected = publication.expected;
        let access = publication.tokens.access_token.expose().to_owned();
        // The expiry as the writer reckons it, on Redis's clock, when it sends the command (as
        // `RedisSession` does from the last read's `TIME`): a command that waits in a slow
        // Redis does not lengthen the set's life.
        let sent = Instant::now();
        let published = self
            .command(
                &format!("publish {access} from gen {expected}"),
                |s, now| {
                    let state = s.scope(scope);
                    if !state.holds(lease, now) {
                        return Err("lease lost");
                    }
                    if state.generation != expected && !skip {
                        return Err("generation moved on");
                    }
                    state.generation = state.generation.max(publication.floor) + 1;
                    state.tokens = Some((
                        publication.tokens.clone(),
                        (sent + publication.expires_in).min(now + publication.expires_in),
                        sent.checked_sub(publication.obtained_ago).unwrap_or(sent),
                    ));
                    state.refreshing = false;
                    state.paused_until = None;
                    state.failures_in_a_row = 0;
                    Ok((state.epoch.clone(), state.generation))
                },
            )
            .await?;
        self.redis.sim.cover(match published {
            Ok(_) => "redis publish accepted",
            Err("lease lost") => "redis publish refused: lease lost",
            Err(_) => "redis publish refused: generation moved on",
        });
        Ok(published.ok().map(|(epoch, generation)| {
            self.redis
                .sim
                .checker
                .lock()
                .saw(&self.who, &epoch, generation);
            generation
        }))
    }

    async fn record_failure(
        &self,
        scope: &str,
        lease: &Lease,
        failure: &Failure,
    ) -> Result<(), CoordinatorError> {
        self.command(
            &format!("record_failure pause {:?}", failure.pause),
            |s, now| {
                let state = s.scope(scope);
                if state.holds(lease, now) {
                    state.paused_until = now.checked_add(failure.pause);
                    state.failures_in_a_row += 1;
                }
            },
        )
        .await?;
        self.redis.sim.cover("redis fleet pause set");
        Ok(())
    }

    async fn reserve_call(
        &self,
        scope: &str,
        call: &str,
        allowance: CallAllowance,
    ) -> Result<Option<Duration>, CoordinatorError> {
        let minute = Duration::from_secs(60);
        let wait = self
            .command("reserve_call", |s, now| {
                let state = s.scope(scope);
                let interval = minute / allowance.per_minute;
                state
                    .calls
                    .retain(|(_, at)| now.saturating_duration_since(*at) < minute);
                let mut wait = Duration::ZERO;
                if state.calls.len() >= allowance.per_minute as usize {
                    wait = (state.calls[0].1 + minute).saturating_duration_since(now);
                }
                let full_at = state.calls_full_at.filter(|at| *at > now).unwrap_or(now);
                let tolerance = interval * (allowance.burst - 1);
                wait = wait.max(
                    full_at
                        .saturating_duration_since(now)
                        .saturating_sub(tolerance),
                );
                if !wait.is_zero() {
                    return Some(wait);
                }
                state.calls_full_at = Some(full_at + interval);
                state.calls.push((call.to_owned(), now));
                None
            })
            .await?;
        self.redis.sim.cover(if wait.is_some() {
            "redis fleet call budget spent"
        } else {
            "redis fleet call taken"
        });
        Ok(wait)
    }

    async fn refund_call(
        &self,
        scope: &str,
        call: &str,
        allowance: CallAllowance,
    ) -> Result<(), CoordinatorError> {
        self.command("refund_call", |s, _| {
            let state = s.scope(scope);
            if let Some(at) = state.calls.iter().position(|(name, _)| name == call) {
                state.calls.remove(at);
                let interval = Duration::from_secs(60) / allowance.per_minute;
                state.calls_full_at = state.calls_full_at.and_then(|at| at.checked_sub(interval));
            }
        })
        .await
    }

    async fn release(&self, scope: &str, lease: &Lease) -> Result<(), CoordinatorError> {
        self.command("release", |s, now| {
            if let Some(state) = s.scopes.get_mut(scope) {
                if state.holds(lease, now) {
                    state.lease = None;
                }
            }
        })
        .await
    }

    async fn clear(&self, scope: &str) -> Result<(), CoordinatorError> {
        self.command("clear", |s, _| {
            let state = s.scope(scope);
            state.generation += 1;
            state.tokens = None;
            state.refreshing = false;
            state.paused_until = None;
            state.failures_in_a_row = 0;
        })
        .await
    }
}
