//! A renewal under the fleet's lease, for every replica: from the shared set when its refresh
//! token may be presented, else a login; published above every generation this replica has
//! seen; and, when it fails, recorded in the shared session so the fleet paces as one process.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::{debug, info, warn};

use crate::error::{AuthError, FailureClass};
use crate::fleet::{Failure, Lease, Publication, SharedTokens};
use crate::stats::RenewReason;
use crate::token::{CachedToken, Freshness, SHARED_UNKNOWN};

use super::Session;
use super::acquire::Source;
use super::fleet_state::Fleet;
use super::pacing::fleet_pause;

/// How a renewal under the lease ended.
pub(super) enum UnderLease {
    Acquired((Arc<CachedToken>, Source)),
    /// The coordinator did not answer: try it again while the grace lasts.
    Unreachable,
    /// The coordinator holds a set this replica must leave alone: renew on this replica's own.
    LeaveAlone,
    /// The lease ran out or the shared set moved on before the refresh: start over.
    LookAgain,
}

impl Session {
    /// The renewal of the replica that holds the lease, for the whole fleet.
    pub(super) async fn renew_under_lease(
        &self,
        fleet: &Fleet,
        lease: &Lease,
        reason: RenewReason,
        local: Option<&Arc<CachedToken>>,
        logout_epoch: u64,
    ) -> Result<UnderLease, AuthError> {
        // Another replica may have published between the first look and the lease.
        let Some(shared) = self
            .coordinate(fleet, fleet.coordinator.read(&fleet.scope))
            .await
        else {
            return Ok(UnderLease::Unreachable);
        };
        if let Some(shared) = &shared {
            fleet.read(shared);
            if shared.foreign_key {
                return Ok(UnderLease::LeaveAlone);
            }
        }
        if let Some(token) = self.adoptable(fleet, shared.as_ref(), local.map(|l| &**l), reason) {
            return Ok(UnderLease::Acquired((token, Source::Shared)));
        }
        if let Some(shared) = shared.as_ref().filter(|s| s.unreadable) {
            self.counters.shared_unreadable();
            warn!(
                generation = shared.generation,
                "the shared IQM session holds something this replica cannot read (another format); renewing and replacing it"
            );
        }
        let expected = shared.as_ref().map_or(0, |s| s.generation);
        let base = self.renewal_base(fleet, shared.as_ref(), local);
        if base.as_deref().is_some_and(|b| b.refresh_token.is_some()) {
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
                None => return Ok(UnderLease::Unreachable),
            }
        }
        let token = match self
            .obtain_for_fleet(
                fleet,
                shared.as_ref(),
                base.as_deref(),
                reason,
                logout_epoch,
            )
            .await
        {
            Ok(token) => token,
            Err((err, failure)) => {
                if !failure.pause.is_zero() {
                    self.coordinate(
                        fleet,
                        fleet
                            .coordinator
                            .record_failure(&fleet.scope, lease, &failure),
                    )
                    .await;
                }
                return Err(err);
            }
        };
        let epoch = shared.as_ref().map_or("", |s| s.epoch.as_str());
        self.publish(fleet, lease, (epoch, expected), &token, logout_epoch)
            .await?;
        Ok(UnderLease::Acquired((token, Source::Iqm)))
    }

    /// The set a renewal under the lease renews from, if its refresh token may be presented:
    /// the shared set, unless the last holder may have spent its refresh token (marked
    /// "refreshing"), it is older than a generation this replica has seen (restored from an
    /// older copy), or it is another account's; with no shared set, a token this replica
    /// obtained on its own (never one that was shared: it is gone for a reason, a logout).
    fn renewal_base(
        &self,
        fleet: &Fleet,
        shared: Option<&SharedTokens>,
        local: Option<&Arc<CachedToken>>,
    ) -> Option<Arc<CachedToken>> {
        let Some(shared) = shared.filter(|s| s.tokens.is_some() || s.refreshing) else {
            return local
                .filter(|local| local.shared_generation() == 0)
                .cloned();
        };
        if shared.refreshing || fleet.saw_marked(&shared.epoch, shared.generation) {
            info!(
                "the last holder of the lease may have spent the shared refresh token; logging in"
            );
            return None;
        }
        if fleet.ended(shared, self.clock.now()) {
            info!("the shared IQM session is one this replica logged out of; logging in");
            return None;
        }
        let seen = fleet.seen_in(&shared.epoch);
        if shared.generation < seen {
            warn!(
                generation = shared.generation,
                seen,
                "the shared IQM session is older than one this replica has seen (Redis lost writes); logging in instead of presenting its refresh token"
            );
            return None;
        }
        let tokens = shared.tokens.clone()?;
        if !self.account.owns(tokens.account.as_deref()) {
            return None;
        }
        self.cached_from_shared(shared, tokens)
    }

    /// A new token from IQM for the fleet, within the holder's budget; on failure, how long
    /// the fleet pauses.
    async fn obtain_for_fleet(
        &self,
        fleet: &Fleet,
        shared: Option<&SharedTokens>,
        base: Option<&CachedToken>,
        reason: RenewReason,
        logout_epoch: u64,
    ) -> Result<Arc<CachedToken>, (AuthError, Failure)> {
        let budget = self
            .policy
            .acquire_timeout
            .min(fleet.coordinator.lease_ttl());
        let obtained =
            tokio::time::timeout(budget, self.obtain_from_iqm(reason, base, logout_epoch))
                .await
                .unwrap_or(Err(AuthError::BudgetExhausted(budget)));
        let fleet_budget_spent = fleet.take_budget_spent();
        obtained.map_err(|err| {
            let failures_before = shared.map_or(0, |s| s.failures_in_a_row);
            // Refused unsent by the fleet's budget: the whole fleet waits for it. Refused by
            // this replica's own budget: another replica may renew, so the fleet does not.
            let pause = match fleet_budget_spent {
                Some(wait) if err.class() == FailureClass::Throttled => wait,
                _ => fleet_pause(&err, &self.policy, failures_before),
            };
            (err, Failure { pause })
        })
    }

    /// Publishes `token` to the fleet under `lease`, above every generation this replica has
    /// seen. A publication whose outcome is unknown leaves the token marked as shared.
    async fn publish(
        &self,
        fleet: &Fleet,
        lease: &Lease,
        (epoch, expected): (&str, u64),
        token: &CachedToken,
        logout_epoch: u64,
    ) -> Result<(), AuthError> {
        let publication = Publication {
            expected,
            floor: fleet.seen_in(epoch),
            tokens: self.stored_from_cached(token),
            expires_in: token
                .deadlines
                .expires_at
                .saturating_duration_since(self.clock.now()),
            obtained_ago: self
                .clock
                .now()
                .saturating_duration_since(token.deadlines.issued),
        };
        // Under the publishing lock, which a logout holds from clearing the shared set to
        // moving the epoch on: a renewal it fenced off publishes nothing to the fleet either.
        let publishing = self.publishing.lock().await;
        self.fenced(logout_epoch)?;
        let published = self
            .coordinate(
                fleet,
                fleet.coordinator.publish(&fleet.scope, lease, &publication),
            )
            .await;
        drop(publishing);
        match published {
            Some(Some(generation)) => {
                fleet.saw(epoch, generation);
                token.set_shared_generation(generation);
                debug!(generation, "published the new IQM token set to the fleet");
            }
            Some(None) => {
                warn!(
                    "the lease ran out (or the shared set moved on) before the new IQM token set was published; keeping it on this replica"
                );
            }
            None => {
                // It may have landed: other replicas may take it, so it is never refreshed alone.
                token.set_shared_generation(SHARED_UNKNOWN);
            }
        }
        Ok(())
    }

    /// The shared set as this replica's token, if it is one this replica should take: readable,
    /// this account's, not the one it already has, and fresh enough for why it renews (a
    /// proactive renewal wants a set not itself due for renewal).
    pub(super) fn adoptable(
        &self,
        fleet: &Fleet,
        shared: Option<&SharedTokens>,
        local: Option<&CachedToken>,
        reason: RenewReason,
    ) -> Option<Arc<CachedToken>> {
        let shared = shared?;
        let tokens = shared.tokens.as_ref()?;
        if local.is_some_and(|local| local.access_token == tokens.access_token)
            || fleet.ended(shared, self.clock.now())
        {
            return None;
        }
        if !self.account.owns(tokens.account.as_deref()) {
            self.counters.foreign_session_ignored();
            if !fleet.warned_foreign_account.swap(true, Ordering::Relaxed) {
                warn!(
                    "the shared IQM session holds a set of another IQM account (or one published without its account); ignoring it"
                );
            }
            return None;
        }
        let token = self.cached_from_shared(shared, tokens.clone())?;
        // Never a step back: a set that expires no later than this replica's own was issued
        // before it (this replica renewed on its own meanwhile), and is no better after a 401.
        if local.is_some_and(|local| local.deadlines.expires_at >= token.deadlines.expires_at) {
            return None;
        }
        let usable = match token.deadlines.freshness(self.clock.now()) {
            Freshness::Fresh => true,
            Freshness::RenewSoon => reason != RenewReason::Proactive,
            Freshness::Expired => false,
        };
        if !usable {
            return None;
        }
        self.counters.shared_adoption();
        debug!(
            generation = shared.generation,
            "took the IQM token set another replica renewed"
        );
        Some(token)
    }

    /// The cached form of a shared set: its lifetime as the coordinator's clock measures it
    /// when it keeps one, and its shared generation.
    fn cached_from_shared(
        &self,
        shared: &SharedTokens,
        mut tokens: crate::store::StoredTokens,
    ) -> Option<Arc<CachedToken>> {
        if let Some(expires_in) = shared.expires_in {
            // Whatever a coordinator says, never past what a token may live.
            let expires_in = expires_in.min(crate::token::MAX_TOKEN_LIFETIME);
            tokens.expires_at = self.clock.wall().checked_add(expires_in)?;
        }
        tokens.shared = false;
        let token = self.cached_from_stored(tokens)?;
        // A coordinator that numbers from 0 still marks the set as shared.
        token.set_shared_generation(match shared.generation {
            0 => SHARED_UNKNOWN,
            generation => generation,
        });
        Some(token)
    }
}
