//! A renewal through the fleet's shared session: take a set another replica renewed, or take
//! the lease and renew for everyone, or wait for the replica that holds it. Only renewals come
//! here; the hot path never does.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use tracing::{debug, info, warn};

use crate::error::AuthError;
use crate::fleet::{CoordinatorError, Lease, SessionCoordinator, SharedTokens};
use crate::stats::RenewReason;
use crate::token::{CachedToken, Freshness};

use super::Session;
use super::acquire::Source;
use super::pacing::fleet_pause;

/// The longest one wait for another replica's set lasts before the lease is tried again (its
/// holder may have crashed).
const WAIT_SLICE: Duration = Duration::from_secs(1);

/// The most any coordinator call may take, whatever the coordinator's own timeout: a
/// coordinator that hangs must not hold a request. Longer than [`WAIT_SLICE`].
const COORDINATOR_CALL_LIMIT: Duration = Duration::from_secs(2);

/// How a renewal under the lease ended.
enum UnderLease {
    Acquired((Arc<CachedToken>, Source)),
    /// The coordinator failed: renew on this replica's own.
    Unavailable,
    /// The lease ran out or the shared set moved on before the refresh: start over.
    LookAgain,
}

/// The fleet's coordinator, as one session uses it.
pub(crate) struct Fleet {
    coordinator: Arc<dyn SessionCoordinator>,
    scope: String,
    /// Whether the last call failed: an outage is logged once, not once per renewal.
    down: AtomicBool,
}

impl Fleet {
    pub(crate) fn new(coordinator: Arc<dyn SessionCoordinator>, scope: String) -> Self {
        Self {
            coordinator,
            scope,
            down: AtomicBool::new(false),
        }
    }
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("coordinator", &self.coordinator)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A token through the shared session, or `Ok(None)` when the coordinator cannot be used
    /// and this replica must renew on its own.
    ///
    /// Invariants: a replica waits for another's renewal at most the lease TTL plus the
    /// acquisition budget; it never presents a refresh token marked as possibly spent; and it
    /// publishes only under the lease, from the generation it renewed.
    pub(super) async fn acquire_shared(
        &self,
        fleet: &Fleet,
        reason: RenewReason,
        logout_epoch: u64,
    ) -> Result<Option<(Arc<CachedToken>, Source)>, AuthError> {
        let local = self.current.load_full();
        let patience = fleet.coordinator.lease_ttl() + self.policy.acquire_timeout;
        let started = tokio::time::Instant::now();
        let Some(mut shared) = self
            .coordinate(fleet, fleet.coordinator.read(&fleet.scope))
            .await
        else {
            return Ok(None);
        };
        loop {
            if let Some(token) = self.adoptable(shared.as_ref(), local.as_deref(), reason) {
                return Ok(Some((token, Source::Shared)));
            }
            if let Some(retry_after) = shared.as_ref().and_then(|s| s.paused_for) {
                debug!(
                    ?retry_after,
                    "the fleet's renewals pause after a failed renewal"
                );
                return Err(AuthError::CallBudgetExhausted { retry_after });
            }
            let Some(lease) = self
                .coordinate(fleet, fleet.coordinator.try_lease(&fleet.scope))
                .await
            else {
                return Ok(None);
            };
            if let Some(lease) = lease {
                let renewed = self
                    .renew_under_lease(fleet, &lease, reason, local.as_deref(), logout_epoch)
                    .await;
                self.coordinate(fleet, fleet.coordinator.release(&fleet.scope, &lease))
                    .await;
                match renewed? {
                    UnderLease::Acquired(acquired) => return Ok(Some(acquired)),
                    UnderLease::Unavailable => return Ok(None),
                    UnderLease::LookAgain => {}
                }
            }
            let waited = started.elapsed();
            if waited >= patience {
                return Err(AuthError::BudgetExhausted(patience));
            }
            debug!("another replica renews the shared IQM session; waiting for its set");
            let seen = shared.as_ref().map_or(0, |s| s.generation);
            let slice = (patience - waited).min(WAIT_SLICE);
            let Some(newer) = self
                .coordinate(
                    fleet,
                    fleet.coordinator.wait_for_newer(&fleet.scope, seen, slice),
                )
                .await
            else {
                return Ok(None);
            };
            shared = newer;
        }
    }

    /// The renewal of the replica that holds the lease, for the whole fleet.
    async fn renew_under_lease(
        &self,
        fleet: &Fleet,
        lease: &Lease,
        reason: RenewReason,
        local: Option<&CachedToken>,
        logout_epoch: u64,
    ) -> Result<UnderLease, AuthError> {
        // Another replica may have published between the first look and the lease.
        let Some(shared) = self
            .coordinate(fleet, fleet.coordinator.read(&fleet.scope))
            .await
        else {
            return Ok(UnderLease::Unavailable);
        };
        if let Some(token) = self.adoptable(shared.as_ref(), local, reason) {
            return Ok(UnderLease::Acquired((token, Source::Shared)));
        }
        if let Some(shared) = shared.as_ref().filter(|s| s.unreadable) {
            self.counters.shared_unreadable();
            warn!(
                generation = shared.generation,
                "the shared IQM session holds something this replica cannot read (another format or encryption key); renewing and replacing it"
            );
        }
        let expected = shared.as_ref().map_or(0, |s| s.generation);
        let shared_set = shared
            .as_ref()
            .and_then(|s| s.tokens.clone())
            .and_then(|tokens| self.cached_from_stored(tokens));
        let base = match &shared {
            Some(shared) if shared.refreshing => {
                info!(
                    "the last holder of the lease may have spent the shared refresh token; logging in"
                );
                None
            }
            Some(SharedTokens {
                tokens: Some(_), ..
            }) => shared_set.as_deref(),
            // No shared set: a token this replica obtained on its own (during an outage) is
            // renewed from; one taken from a shared set that is gone (a logout) is not.
            _ => local.filter(|local| local.shared_generation() == 0),
        };
        if base.is_some_and(|b| b.refresh_token.is_some()) {
            let marked = self
                .coordinate(
                    fleet,
                    fleet
                        .coordinator
                        .mark_refreshing(&fleet.scope, lease, expected),
                )
                .await;
            match marked {
                Some(true) => {}
                // The lease ran out, or the set moved on: look again.
                Some(false) => return Ok(UnderLease::LookAgain),
                None => return Ok(UnderLease::Unavailable),
            }
        }
        let budget = self
            .policy
            .acquire_timeout
            .min(fleet.coordinator.lease_ttl());
        let obtained =
            tokio::time::timeout(budget, self.obtain_from_iqm(reason, base, logout_epoch))
                .await
                .unwrap_or(Err(AuthError::BudgetExhausted(budget)));
        let token = match obtained {
            Ok(token) => token,
            Err(err) => {
                let pause = fleet_pause(&err, &self.policy);
                if !pause.is_zero() {
                    self.coordinate(fleet, fleet.coordinator.pause(&fleet.scope, lease, pause))
                        .await;
                }
                return Err(err);
            }
        };
        let stored = self.stored_from_cached(&token);
        // Under the publishing lock, which a logout holds from clearing the shared set to
        // moving the epoch on: a renewal it fenced off publishes nothing to the fleet either.
        let publishing = self.publishing.lock().await;
        self.fenced(logout_epoch)?;
        let published = self
            .coordinate(
                fleet,
                fleet
                    .coordinator
                    .publish(&fleet.scope, lease, expected, &stored),
            )
            .await;
        drop(publishing);
        match published {
            Some(Some(generation)) => {
                token.set_shared_generation(generation);
                debug!(generation, "published the new IQM token set to the fleet");
            }
            Some(None) => {
                warn!(
                    "the lease ran out before the new IQM token set was published; keeping it on this replica"
                );
            }
            None => {}
        }
        Ok(UnderLease::Acquired((token, Source::Iqm)))
    }

    /// The shared set as this replica's token, if it is one this replica should take: readable,
    /// not the one it already has, and fresh enough for why it renews (a proactive renewal wants
    /// a set not itself due for renewal).
    fn adoptable(
        &self,
        shared: Option<&SharedTokens>,
        local: Option<&CachedToken>,
        reason: RenewReason,
    ) -> Option<Arc<CachedToken>> {
        let shared = shared?;
        let tokens = shared.tokens.as_ref()?;
        if local.is_some_and(|local| {
            local.shared_generation() == shared.generation
                || local.access_token == tokens.access_token
        }) {
            return None;
        }
        let token = self.cached_from_stored(tokens.clone())?;
        let usable = match token.deadlines.freshness(self.clock.now()) {
            Freshness::Fresh => true,
            Freshness::RenewSoon => reason != RenewReason::Proactive,
            Freshness::Expired => false,
        };
        if !usable {
            return None;
        }
        token.set_shared_generation(shared.generation);
        self.counters.shared_adoption();
        debug!(
            generation = shared.generation,
            "took the IQM token set another replica renewed"
        );
        Some(token)
    }

    /// One coordinator call, bounded and isolated; `None` if it failed. A failure is counted,
    /// and logged once per outage.
    pub(super) async fn coordinate<T>(
        &self,
        fleet: &Fleet,
        call: impl Future<Output = Result<T, CoordinatorError>>,
    ) -> Option<T> {
        let outcome = tokio::time::timeout(
            COORDINATOR_CALL_LIMIT,
            AssertUnwindSafe(call).catch_unwind(),
        )
        .await;
        let err = match outcome {
            Ok(Ok(Ok(value))) => {
                if fleet.down.swap(false, Ordering::Relaxed) {
                    info!("the shared IQM session is reachable again");
                }
                return Some(value);
            }
            Ok(Ok(Err(err))) => err,
            Ok(Err(_panic)) => {
                self.counters.user_code_panic();
                CoordinatorError("the coordinator panicked".to_owned())
            }
            Err(_) => CoordinatorError(format!("no answer within {COORDINATOR_CALL_LIMIT:?}")),
        };
        self.counters.shared_error();
        if !fleet.down.swap(true, Ordering::Relaxed) {
            warn!(error = %err, "the shared IQM session is unavailable; this replica renews on its own until it is back");
        }
        None
    }

    /// Removes the shared set, for a logout.
    pub(super) async fn clear_shared(&self) {
        if let Some(fleet) = &self.fleet {
            self.coordinate(fleet, fleet.coordinator.clear(&fleet.scope))
                .await;
        }
    }
}
