//! The background renewer: renews a token that is in use shortly before it expires, so that
//! requests never wait for a renewal in steady state, and tells the hot path when a token
//! becomes due (so that the hot path need not read the clock before then).

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use crate::stats::RenewReason;
use crate::token::Freshness;

use super::Session;

/// How long the background renewer waits before it tries again after a failed early renewal
/// (the token it holds is still valid meanwhile).
const PROACTIVE_RETRY_PAUSE: Duration = Duration::from_secs(2);

impl Session {
    /// Starts the background renewer once a token exists (and again if the runtime it ran on
    /// has gone away).
    ///
    /// Invariant: at most one renewer task per session, holding only a weak reference to it, so
    /// that dropping the last `IqmAuth` clone ends it (the session's `Drop` aborts it).
    pub(super) fn ensure_renewer(self: &Arc<Self>) {
        if !self.policy.background_renewal {
            return;
        }
        let mut renewer = self.renewer.lock();
        if renewer.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let task = runtime.spawn(renew_ahead_of_expiry(
                Arc::downgrade(self),
                Arc::clone(&self.renewer_wake),
            ));
            *renewer = Some(task.abort_handle());
        }
    }
}

/// Dropped with the renewer's task, also when its runtime shuts down with the `IqmAuth` living on
/// in another runtime.
///
/// Invariant: a token is marked known fresh only while a renewer is there to clear the mark when
/// it falls due; without one, the hot path reads the clock again, so an expired token is never
/// sent on the word of a timer that no longer runs.
struct DistrustFreshMarks(Weak<Session>);

impl Drop for DistrustFreshMarks {
    fn drop(&mut self) {
        if let Some(session) = self.0.upgrade() {
            if let Some(token) = session.current.load().as_deref() {
                token.forget_known_fresh();
            }
        }
    }
}

/// The renewer's loop: sleeps until the cached token is due, renews it if it was used, and
/// waits to be woken when a new token is stored or a request finds one due.
async fn renew_ahead_of_expiry(session: Weak<Session>, wake: Arc<Notify>) {
    let _on_exit = DistrustFreshMarks(session.clone());
    loop {
        let (pause, clock) = {
            let Some(session) = session.upgrade() else {
                return;
            };
            let clock = Arc::clone(&session.clock);
            let pause = match session.current() {
                Some(token) => {
                    let now = session.clock.now();
                    let freshness = token.deadlines.freshness(now);
                    if freshness != Freshness::Fresh {
                        token.forget_known_fresh();
                    }
                    match freshness {
                        Freshness::Fresh => Some(token.deadlines.renew_at - now),
                        Freshness::RenewSoon if token.was_used() => {
                            match session
                                .renew(RenewReason::Proactive, Some(token.generation))
                                .await
                            {
                                Ok(_) => continue,
                                // The token stays in use until it expires; try again later.
                                Err(_) => Some(PROACTIVE_RETRY_PAUSE),
                            }
                        }
                        // Unused or expired: the next request, or the next stored token, decides
                        // what happens.
                        _ => None,
                    }
                }
                None => None,
            };
            (pause, clock)
        };
        match pause {
            // On the layer's clock, so a clock moved by hand (a test's) wakes it in time.
            Some(pause) => {
                tokio::select! {
                    () = clock.sleep_until(clock.now() + pause) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}
