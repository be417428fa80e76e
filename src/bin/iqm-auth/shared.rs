//! The shared session, checked before a command relies on it.

use iqm_auth::{CoordinatorError, IqmAuth, SharedStatus};

use crate::failure::Failure;

/// Fails if the shared session is configured and out of reach, or sealed under a key this run
/// does not hold: the layer would then log in on its own, a login the fleet knows nothing of,
/// and a person or a script should hear of it instead.
pub(crate) async fn check_shared_session(auth: &IqmAuth) -> Result<(), Failure> {
    check_shared(&auth.status().await.shared)
}

/// [`check_shared_session`], given the shared session's status.
pub(crate) fn check_shared(
    shared: &Option<Result<SharedStatus, CoordinatorError>>,
) -> Result<(), Failure> {
    match shared {
        Some(Err(err)) => Err(redis_unreachable(err)),
        Some(Ok(shared)) if shared.foreign_key => Err(Failure::Config(
            "the shared session is sealed under an encryption key that IQM_REDIS_KEYS does not \
             hold; set the services' keys"
                .into(),
        )),
        _ => Ok(()),
    }
}

pub(crate) fn redis_unreachable(err: &CoordinatorError) -> Failure {
    Failure::Redis(format!(
        "{err}; check --redis (IQM_REDIS_URL) and that Redis is up, or leave it out to log in on \
         this machine alone"
    ))
}
