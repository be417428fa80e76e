//! [`IqmAuth::status`]: what a layer, its token store and its shared session hold, read without
//! an auth call and without a secret in the answer, for health checks and `iqm-auth status`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::IqmAuth;
use crate::account::AccountFingerprint;
use crate::config::Config;
use crate::fleet::{CoordinatorError, SessionCoordinator, SharedTokens};
use crate::store::{StoreError, StoredTokens, TokenStore};

/// The most one look at the token store or the shared session may take: a status is asked for
/// when something may be wrong, and must answer even then.
const INSPECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// What [`IqmAuth::status`] found. Holds no secret: no token, refresh token or credential, only
/// whether each is there and for how long.
#[derive(Debug)]
#[non_exhaustive]
pub struct SessionStatus {
    /// The token this layer has cached, if any.
    pub cached: Option<TokenStatus>,
    /// The set the token store holds (`Ok(None)`: none), or why it could not be read.
    pub stored: Result<Option<TokenStatus>, StoreError>,
    /// The fleet's shared session, or why it could not be read; `None` when no shared session
    /// is configured.
    pub shared: Option<Result<SharedStatus, CoordinatorError>>,
}

/// A token set as a status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenStatus {
    /// The Organization Workspace ID the set is for.
    pub ow_id: u64,
    /// How long its access token still lives; zero once it has expired.
    pub expires_in: Duration,
    /// Whether it holds a refresh token.
    pub has_refresh_token: bool,
    /// Whether it belongs to this layer's account (its fingerprint matches). A set of another
    /// account, or one saved without its account, is never used.
    pub account_matches: bool,
}

impl TokenStatus {
    /// Whether the layer would use this set's access token without an auth call: it is this
    /// account's and has not expired.
    pub fn is_usable(&self) -> bool {
        self.account_matches && !self.expires_in.is_zero()
    }
}

/// The fleet's shared session as a status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedStatus {
    /// The session's epoch (see [`SharedTokens::epoch`]); empty when nothing was ever stored.
    pub epoch: String,
    /// The shared generation; 0 when nothing was ever stored.
    pub generation: u64,
    /// The shared set, if there is one this layer can read.
    pub tokens: Option<TokenStatus>,
    /// How long ago the set was obtained from IQM, when the coordinator keeps it.
    pub obtained_ago: Option<Duration>,
    /// Whether the lease's holder was about to present the set's refresh token.
    pub refreshing: bool,
    /// Whether something is stored that cannot be read as a token set.
    pub unreadable: bool,
    /// Whether the set is sealed under an encryption key this layer does not hold.
    pub foreign_key: bool,
    /// How long the fleet's renewals still pause after the last holder's renewal failed.
    pub paused_for: Option<Duration>,
    /// How many holders' renewals failed in a row since the last published set.
    pub failures_in_a_row: u32,
    /// How many replicas read the session in the last hour, this one included (0: not known).
    pub replicas: u32,
    /// The lease, the right to renew for the fleet.
    pub lease: LeaseState,
}

/// The fleet's lease as a coordinator inspected it, from
/// [`SessionCoordinator::lease_state`](crate::SessionCoordinator::lease_state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseState {
    /// No replica holds it.
    Free,
    /// A replica holds it.
    Held {
        /// How long it is held for at most, unless given up sooner.
        expires_in: Duration,
    },
    /// The coordinator cannot tell.
    Unknown,
}

/// What a status is read from, kept from the layer's configuration.
pub(crate) struct StatusSources {
    store: Arc<dyn TokenStore>,
    account: AccountFingerprint,
    shared: Option<(Arc<dyn SessionCoordinator>, String)>,
}

impl StatusSources {
    pub(crate) fn of(config: &Config) -> Self {
        Self {
            store: Arc::clone(&config.token_store),
            account: config.account.clone(),
            shared: config.shared.clone(),
        }
    }

    fn token_status(&self, tokens: &StoredTokens, expires_in: Option<Duration>) -> TokenStatus {
        TokenStatus {
            ow_id: tokens.ow_id,
            expires_in: expires_in.unwrap_or_else(|| tokens.remaining()),
            has_refresh_token: tokens.refresh_token.is_some(),
            account_matches: self.account.owns(tokens.account.as_deref()),
        }
    }

    async fn stored(&self) -> Result<Option<TokenStatus>, StoreError> {
        let loaded = tokio::time::timeout(INSPECTION_TIMEOUT, self.store.load())
            .await
            .unwrap_or_else(|_| Err(StoreError::Io(timed_out("the token store"))))?;
        Ok(loaded.map(|tokens| self.token_status(&tokens, None)))
    }

    async fn shared(
        &self,
        coordinator: &dyn SessionCoordinator,
        scope: &str,
    ) -> Result<SharedStatus, CoordinatorError> {
        let read = bounded(coordinator.read(scope)).await?;
        let lease = bounded(coordinator.lease_state(scope)).await?;
        let shared = read.unwrap_or_else(|| SharedTokens::new(0, None, false));
        Ok(SharedStatus {
            tokens: shared
                .tokens
                .as_ref()
                .map(|tokens| self.token_status(tokens, shared.expires_in)),
            obtained_ago: shared.obtained_ago,
            refreshing: shared.refreshing,
            unreadable: shared.unreadable,
            foreign_key: shared.foreign_key,
            paused_for: shared.paused_for,
            failures_in_a_row: shared.failures_in_a_row,
            replicas: shared.replicas,
            generation: shared.generation,
            epoch: shared.epoch,
            lease,
        })
    }
}

async fn bounded<T>(
    call: impl Future<Output = Result<T, CoordinatorError>>,
) -> Result<T, CoordinatorError> {
    tokio::time::timeout(INSPECTION_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(CoordinatorError(
                timed_out("the shared session").to_string(),
            ))
        })
}

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} did not answer within {INSPECTION_TIMEOUT:?}"),
    )
}

impl IqmAuth {
    /// What this layer has cached, what its token store holds and what the fleet's shared
    /// session holds (generation, lease, pause, failures in a row), read without any auth call
    /// and without a secret in the answer: for a health check, or `iqm-auth status`. Each look
    /// at the store or the shared session is given 5 s.
    ///
    /// Reading the shared session counts as a read by a replica (see
    /// [`SharedTokens::replicas`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let iqm = iqm_auth::testing::FakeIqm::start().await?;
    /// let fleet = iqm_auth::MemoryCoordinator::default();
    /// let replica = iqm.auth_builder().shared_session(fleet.clone()).build()?;
    /// replica.access_token().await?;
    ///
    /// let auth = iqm.auth_builder().shared_session(fleet).build()?;
    /// let status = auth.status().await;
    /// assert!(status.cached.is_none()); // this layer has not needed a token yet
    /// let shared = status.shared.expect("a shared session is configured")?;
    /// assert_eq!(shared.generation, 1);
    /// assert!(shared.tokens.is_some_and(|tokens| tokens.is_usable()));
    /// assert_eq!(shared.lease, iqm_auth::LeaseState::Free);
    /// assert_eq!(iqm.logins(), 1); // the replica's: a status makes no auth call
    /// # Ok(())
    /// # }
    /// ```
    pub async fn status(&self) -> SessionStatus {
        let sources = &self.inner.status_sources;
        let cached = self.inner.session.current().map(|token| TokenStatus {
            ow_id: token.ow_id,
            expires_in: self.stats().token_expires_in.unwrap_or_default(),
            has_refresh_token: token.refresh_token.is_some(),
            account_matches: true,
        });
        let stored = sources.stored().await;
        let shared = match &sources.shared {
            Some((coordinator, scope)) => Some(sources.shared(coordinator.as_ref(), scope).await),
            None => None,
        };
        SessionStatus {
            cached,
            stored,
            shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::fleet::{Failure, Lease, MemoryCoordinator, Publication};
    use crate::secret::Secret;

    fn layer(fleet: &MemoryCoordinator) -> IqmAuth {
        IqmAuth::builder()
            .base_url("http://127.0.0.1:9")
            .client_credentials("id", "secret")
            .workspace_host("acme.iqm.com")
            .credentials("ops@acme.example", "password")
            .shared_session(fleet.clone())
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn a_held_lease_a_pause_and_the_failures_in_a_row_show() {
        let fleet = MemoryCoordinator::default();
        let auth = layer(&fleet);
        let scope = auth.inner.status_sources.shared.as_ref().unwrap().1.clone();
        let lease = Lease::unique();
        assert!(fleet.try_lease(&scope, &lease).await.unwrap());
        let failure = Failure {
            pause: Duration::from_secs(30),
        };
        fleet
            .record_failure(&scope, &lease, &failure)
            .await
            .unwrap();

        let shared = auth.status().await.shared.unwrap().unwrap();

        let LeaseState::Held { expires_in } = shared.lease else {
            panic!("{:?}", shared.lease);
        };
        assert!(expires_in <= fleet.lease_ttl());
        assert!(shared.paused_for.is_some_and(|p| p <= failure.pause));
        assert_eq!((shared.failures_in_a_row, shared.tokens), (1, None));
    }

    #[tokio::test]
    async fn a_published_set_of_this_account_is_usable_and_a_released_lease_free() {
        let fleet = MemoryCoordinator::default();
        let auth = layer(&fleet);
        let (_, scope) = auth.inner.status_sources.shared.clone().unwrap();
        let lease = Lease::unique();
        assert!(fleet.try_lease(&scope, &lease).await.unwrap());
        let tokens = StoredTokens::new(
            Secret::new("access"),
            None,
            7,
            SystemTime::now() + Duration::from_secs(600),
        )
        .with_account(auth.inner.status_sources.account.as_str());
        let publication = Publication {
            expected: 0,
            floor: 0,
            tokens,
            expires_in: Duration::from_secs(600),
            obtained_ago: Duration::ZERO,
        };
        fleet.publish(&scope, &lease, &publication).await.unwrap();
        fleet.release(&scope, &lease).await.unwrap();

        let shared = auth.status().await.shared.unwrap().unwrap();

        assert_eq!((shared.generation, shared.lease), (1, LeaseState::Free));
        let tokens = shared.tokens.unwrap();
        assert!(tokens.is_usable() && !tokens.has_refresh_token);
        assert_eq!(tokens.ow_id, 7);
        assert!(tokens.expires_in <= Duration::from_secs(600));
    }
}
