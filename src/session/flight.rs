//! The single flight: at most one renewal runs at a time, in a task of its own, and every caller
//! that wants a renewal meanwhile waits for that one's outcome.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;
use tracing::{Instrument, debug, info_span, warn};

use crate::error::AuthError;
use crate::stats::RenewReason;
use crate::token::CachedToken;

use super::Session;
use super::acquire::{Acquired, Source};
use super::pacing::Pacing;

/// How many times a caller starts a renewal again when the one it waited on was interrupted
/// before it answered (its task aborted, e.g. by a runtime shutting down).
const INTERRUPTED_RENEWAL_RETRIES: usize = 1;

/// What a renewal hands every caller waiting on it.
pub(super) type Outcome = Result<Arc<CachedToken>, AuthError>;

/// The renewal slot, behind the session's lock: the renewal running now (at most one), and the
/// pacing that decides whether a new one may start.
#[derive(Default)]
pub(super) struct RenewalSlot {
    running: Option<RunningRenewal>,
    next_id: u64,
    pub(super) pacing: Pacing,
}

impl RenewalSlot {
    /// Lets go of the running renewal, if any, for a logout that fenced it off: it runs on and
    /// publishes nothing, and callers from now on start a new one instead of joining it.
    pub(super) fn detach(&mut self) {
        self.running = None;
    }
}

struct RunningRenewal {
    id: u64,
    outcome: watch::Receiver<Option<Outcome>>,
}

/// What [`Session::join_or_start`] found.
enum Joined {
    /// The cache already holds a token other than the stale one.
    Newer(Arc<CachedToken>),
    /// A renewal runs in a task; wait for its outcome.
    Waiting(watch::Receiver<Option<Outcome>>),
}

impl Session {
    /// Renews the token unless the cache already holds a generation other than `stale` (the one
    /// the caller found wanting; `None` when it found the cache empty). Joins the renewal that is
    /// running, if any.
    ///
    /// Invariant: any number of concurrent callers that saw the same stale token cause one
    /// renewal, and every caller of one renewal gets its outcome, success or error.
    pub(crate) async fn renew(
        self: &Arc<Self>,
        reason: RenewReason,
        stale: Option<u64>,
    ) -> Result<Arc<CachedToken>, AuthError> {
        for _ in 0..=INTERRUPTED_RENEWAL_RETRIES {
            let mut outcome = match self.join_or_start_or_trust(reason, stale)? {
                Joined::Newer(token) => return Ok(token),
                Joined::Waiting(outcome) => outcome,
            };
            if let Ok(outcome) = outcome.wait_for(Option::is_some).await {
                if let Some(result) = outcome.as_ref() {
                    return result.clone();
                }
            }
            debug!("a token renewal stopped before it answered; starting another");
        }
        Err(AuthError::Interrupted)
    }

    /// Starts a renewal in the background (or leaves the running one be), for a caller that
    /// does not wait for it.
    pub(crate) fn start_renewal(self: &Arc<Self>, reason: RenewReason, stale: Option<u64>) {
        drop(self.join_or_start_or_trust(reason, stale));
    }

    /// [`join_or_start`](Self::join_or_start); when no renewal can start (renewals paused, the
    /// budget spent), the stale token's refused mark is cleared, so that requests send it
    /// again rather than fail on a renewal that will not come.
    fn join_or_start_or_trust(
        self: &Arc<Self>,
        reason: RenewReason,
        stale: Option<u64>,
    ) -> Result<Joined, AuthError> {
        let joined = self.join_or_start(reason, stale);
        if joined.is_err() {
            if let Some(token) = self.current.load().as_deref() {
                if Some(token.generation) == stale {
                    token.clear_refused();
                }
            }
        }
        joined
    }

    /// Joins the running renewal, returns a token newer than `stale`, fails fast while renewals
    /// are paused or the budget for failed auth calls is spent, or starts a renewal in a task
    /// of its own.
    fn join_or_start(
        self: &Arc<Self>,
        reason: RenewReason,
        stale: Option<u64>,
    ) -> Result<Joined, AuthError> {
        let mut slot = self.renewal.lock();
        if let Some(running) = &slot.running {
            self.counters.shared_wait();
            return Ok(Joined::Waiting(running.outcome.clone()));
        }
        if let Some(token) = self.current.load_full() {
            if Some(token.generation) != stale {
                return Ok(Joined::Newer(token));
            }
        }
        let now = self.clock.now();
        if let Some(err) = slot.pacing.blocked_at(now) {
            return Err(err);
        }
        // With a shared session a renewal may need no auth call (another replica's set), so
        // the budget is left to guard each call.
        if self.fleet.is_none() {
            if let Some(retry_after) = self.budget.lock().wait_at(now) {
                return Err(AuthError::CallBudgetExhausted { retry_after });
            }
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| AuthError::NoRuntime)?;
        let id = slot.next_id;
        slot.next_id += 1;
        let (sender, outcome) = watch::channel(None);
        slot.running = Some(RunningRenewal {
            id,
            outcome: outcome.clone(),
        });
        // Read under the slot's lock, which logout takes to move the epoch on.
        let logout_epoch = self.logout_epoch.load(Ordering::Relaxed);
        drop(slot);
        self.counters.renewal(reason);
        // The guard exists before the task first runs, so even a renewal dropped unpolled (its
        // runtime shutting down) frees the slot.
        let guard = RenewalGuard {
            session: Arc::clone(self),
            id,
            sender,
        };
        runtime.spawn(
            run_renewal(guard, reason, stale, logout_epoch)
                .instrument(info_span!("iqm_auth.renew", %reason)),
        );
        Ok(Joined::Waiting(outcome))
    }
}

/// Frees the renewal slot when a renewal ends, also when its task is aborted half-way, so that
/// later callers start a new renewal instead of waiting on one that will never answer.
///
/// Invariant: the slot is freed before the outcome channel closes (`Drop` frees it, and the
/// sender, a field, drops after `Drop::drop`), so a waiter that sees the channel close without
/// an outcome always finds the slot free and starts a new renewal.
struct RenewalGuard {
    session: Arc<Session>,
    id: u64,
    sender: watch::Sender<Option<Outcome>>,
}

impl RenewalGuard {
    /// Frees the slot if it still holds this renewal; the caller holds the lock.
    fn free(&self, slot: &mut RenewalSlot) {
        if slot.running.as_ref().is_some_and(|r| r.id == self.id) {
            slot.running = None;
        }
    }
}

impl Drop for RenewalGuard {
    fn drop(&mut self) {
        self.free(&mut self.session.renewal.lock());
    }
}

/// One renewal, from the first auth call to the stored token and the outcome for its waiters.
///
/// Invariants: the cache only ever holds a complete token, replaced whole; a failed renewal never
/// replaces it. A rotated refresh token is stored together with the access token it came with.
/// A renewal that started before a logout (`logout_epoch` moved on) publishes nothing: its
/// token is not cached, not saved and not handed to the hook. A new set from IQM is saved before
/// it is cached, and the store's turn passes on only then.
async fn run_renewal(
    guard: RenewalGuard,
    reason: RenewReason,
    stale: Option<u64>,
    logout_epoch: u64,
) {
    let session = &guard.session;
    let acquired = session.acquire(reason, logout_epoch).await;
    // Held from the epoch check through the save, so that a logout cannot slip between.
    let publishing = session.publishing.lock().await;
    let acquired = match acquired {
        Ok(_) if session.fenced(logout_epoch).is_err() => Err(AuthError::LoggedOut),
        Ok(acquired) => {
            // Saved before it is used: a process that stops right after its request never
            // leaves a rotated refresh token unsaved.
            if acquired.source == Source::Iqm {
                session.persist(&acquired.token).await;
            }
            let mut slot = session.renewal.lock();
            session.current.store(Some(Arc::clone(&acquired.token)));
            slot.pacing
                .record(Ok(()), session.clock.now(), &session.policy);
            guard.free(&mut slot);
            Ok(acquired)
        }
        Err(err) => Err(err),
    };
    let err = match acquired {
        Ok(Acquired {
            token, store_turn, ..
        }) => {
            // The next layer on the store reads it only now, with this set saved.
            drop((publishing, store_turn));
            debug!(generation = token.generation, "stored a new IQM token");
            session.counters.renewal_succeeded();
            session.ensure_renewer();
            session.renewer_wake.notify_one();
            guard.sender.send_replace(Some(Ok(token)));
            return;
        }
        Err(err) => err,
    };
    drop(publishing);
    {
        let mut slot = session.renewal.lock();
        guard.free(&mut slot);
        // Under the slot's lock, so that a 401 marking the token now starts a renewal of its
        // own rather than joining this one and keeping its mark.
        if let Some(token) = session.current.load().as_deref() {
            if Some(token.generation) == stale {
                token.clear_refused();
            }
        }
        slot.pacing
            .record(Err(&err), session.clock.now(), &session.policy);
    }
    if matches!(err, AuthError::LoggedOut) {
        debug!("dropped the token of a renewal that a logout overtook");
    } else {
        session.counters.failed_renewal(&err);
        warn!(class = %err.class(), error = %err, "IQM token renewal failed");
    }
    guard.sender.send_replace(Some(Err(err)));
}
