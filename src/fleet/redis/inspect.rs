//! Looks at the shared session for status displays, outside the protocol: nothing here is
//! written, and no replica's decision reads it.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::RedisSession;
use crate::fleet::CoordinatorError;
use crate::status::LeaseState;

/// The lease's time to live in milliseconds: -2 when no replica holds it, -1 when it would
/// never expire (no replica sets one so).
static LEASE_TTL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
return redis.call('PTTL', KEYS[1])
",
    )
});

impl RedisSession {
    pub(super) async fn inspect_lease(&self, scope: &str) -> Result<LeaseState, CoordinatorError> {
        let ttl_ms: i64 = self.run(&LEASE_TTL, scope, &["lease"], &[]).await?;
        Ok(match u64::try_from(ttl_ms) {
            Ok(ms) => LeaseState::Held {
                expires_in: Duration::from_millis(ms),
            },
            Err(_) if ttl_ms == -2 => LeaseState::Free,
            Err(_) => LeaseState::Unknown,
        })
    }
}
