//! Unknown outcomes (issue 15, item 3): a Redis call that landed but whose answer was lost.
//! Layers in this process against a real `redis-server`, through a coordinator that applies a
//! call and then loses its answer, as a timeout after sending does.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use iqm_auth::reqwest_middleware::ClientBuilder;
use iqm_auth::{
    CallAllowance, CoordinatorError, Failure, IqmAuth, Lease, Publication, RedisSession,
    SessionCoordinator, SharedTokens,
};
use parking_lot::Mutex;

use super::setup;

/// A `RedisSession` that loses the answer of the next call of each named method (the call is
/// applied first), and fails every call while `down`.
#[derive(Debug, Clone)]
struct LosesAnswers(Arc<State>);

#[derive(Debug)]
struct State {
    inner: RedisSession,
    lose: Mutex<BTreeSet<&'static str>>,
    down: AtomicBool,
    /// What each `try_lease` answered (`None`: lost), in order.
    leases: Mutex<Vec<Option<bool>>>,
}

impl std::ops::Deref for LosesAnswers {
    type Target = State;
    fn deref(&self) -> &State {
        &self.0
    }
}

impl LosesAnswers {
    fn new(inner: RedisSession) -> Self {
        Self(Arc::new(State {
            inner,
            lose: Mutex::default(),
            down: AtomicBool::new(false),
            leases: Mutex::default(),
        }))
    }

    fn lose_next(&self, method: &'static str) {
        self.lose.lock().insert(method);
    }

    fn check(&self) -> Result<(), CoordinatorError> {
        if self.down.load(Ordering::Relaxed) {
            return Err(CoordinatorError("connection refused".to_owned()));
        }
        Ok(())
    }

    fn answer<T>(&self, method: &'static str, answer: T) -> Result<T, CoordinatorError> {
        if self.lose.lock().remove(method) {
            return Err(CoordinatorError(format!(
                "{method}: no answer within 500ms"
            )));
        }
        Ok(answer)
    }
}

#[async_trait::async_trait]
impl SessionCoordinator for LosesAnswers {
    fn namespace(&self) -> Option<&str> {
        self.inner.namespace()
    }
    fn lease_ttl(&self) -> Duration {
        self.inner.lease_ttl()
    }
    async fn read(&self, scope: &str) -> Result<Option<SharedTokens>, CoordinatorError> {
        self.check()?;
        self.inner.read(scope).await
    }
    async fn try_lease(&self, scope: &str, lease: &Lease) -> Result<bool, CoordinatorError> {
        self.check()?;
        let held = self.inner.try_lease(scope, lease).await?;
        let answer = self.answer("try_lease", held);
        self.leases.lock().push(answer.as_ref().ok().copied());
        answer
    }
    async fn mark_refreshing(&self, s: &str, l: &Lease, g: u64) -> Result<bool, CoordinatorError> {
        self.check()?;
        self.inner.mark_refreshing(s, l, g).await
    }
    async fn publish(
        &self,
        scope: &str,
        lease: &Lease,
        publication: &Publication,
    ) -> Result<Option<u64>, CoordinatorError> {
        self.check()?;
        let published = self.inner.publish(scope, lease, publication).await?;
        self.answer("publish", published)
    }
    async fn record_failure(
        &self,
        s: &str,
        l: &Lease,
        f: &Failure,
    ) -> Result<(), CoordinatorError> {
        self.check()?;
        self.inner.record_failure(s, l, f).await
    }
    async fn reserve_call(
        &self,
        s: &str,
        c: &str,
        a: CallAllowance,
    ) -> Result<Option<Duration>, CoordinatorError> {
        self.check()?;
        self.inner.reserve_call(s, c, a).await
    }
    async fn refund_call(
        &self,
        s: &str,
        c: &str,
        a: CallAllowance,
    ) -> Result<(), CoordinatorError> {
        self.check()?;
        self.inner.refund_call(s, c, a).await
    }
    async fn release(&self, scope: &str, lease: &Lease) -> Result<(), CoordinatorError> {
        self.check()?;
        self.inner.release(scope, lease).await
    }
    async fn clear(&self, scope: &str) -> Result<(), CoordinatorError> {
        self.check()?;
        self.inner.clear(scope).await
    }
}

fn layer(iqm: &iqm_auth::testing::FakeIqm, shared: LosesAnswers) -> IqmAuth {
    iqm.auth_builder()
        .shared_session(shared)
        .build()
        .expect("layer")
}

/// A publish that landed but whose answer was lost: the other replicas take the set, so the
/// holder treats it as shared, and later, alone (Redis down), logs in instead of refreshing it.
/// With the set taken for private, the holder would refresh it: (logins, refreshes) = (1, 1).
#[test]
fn a_publication_whose_answer_was_lost_is_never_refreshed_alone() {
    let Some((redis, rt, iqm)) = setup() else {
        return;
    };
    let holder_redis = LosesAnswers::new(RedisSession::builder(redis.url()).build().unwrap());
    holder_redis.lose_next("publish");
    let holder = layer(&iqm, holder_redis.clone());
    rt.block_on(holder.access_token()).unwrap();

    // It landed: another replica takes it without an auth call.
    let other = iqm
        .auth_builder()
        .shared_session(RedisSession::builder(redis.url()).build().unwrap())
        .build()
        .unwrap();
    rt.block_on(other.access_token()).unwrap();
    assert_eq!(other.stats().shared_adoptions, 1);
    assert_eq!((iqm.logins(), iqm.refreshes()), (1, 0));

    // Redis goes away; the token is revoked: the holder renews alone.
    holder_redis.down.store(true, Ordering::Relaxed);
    iqm.revoke_all_access_tokens();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(holder.clone())
        .build();
    let status = rt
        .block_on(client.get(iqm.url("/api/v3/campaigns")).send())
        .unwrap()
        .status();
    assert_eq!(status, 200);
    assert_eq!(holder.stats().renewed_alone, 1);
    assert_eq!((iqm.logins(), iqm.refreshes()), (2, 0));
    assert_eq!(iqm.refresh_reuses(), 0);
}

/// A lease taken by a call whose answer was lost is recognised when the replica asks again
/// (it chose the fencing value): it renews at once instead of waiting out a lease nobody holds.
/// With a fencing value drawn by Redis, the second try would find the lease taken: `[None,
/// Some(false), …]` and a wait of the lease TTL.
#[test]
fn a_lease_whose_answer_was_lost_is_recognised_on_the_next_try() {
    let Some((redis, rt, iqm)) = setup() else {
        return;
    };
    let shared = LosesAnswers::new(
        RedisSession::builder(redis.url())
            .lease_ttl(Duration::from_secs(60))
            .build()
            .unwrap(),
    );
    shared.lose_next("try_lease");
    let auth = layer(&iqm, shared.clone());
    rt.block_on(auth.access_token()).unwrap();

    assert_eq!(*shared.leases.lock(), [None, Some(true)]);
    assert_eq!((iqm.logins(), iqm.refreshes()), (1, 0));
    assert_eq!(auth.stats().renewed_alone, 0);
}
