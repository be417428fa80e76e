//! The edge cases issue: each scenario as the behaviour that must hold, with exact counts of
//! what IQM received.

use std::time::Duration;

use iqm_auth::AuthError;
use iqm_auth::testing::Answer;

use crate::support::Harness;

const SECOND: Duration = Duration::from_secs(1);

// 1. A refresh token that IQM may have acted on counts as spent: the next step is a login.

#[tokio::test]
async fn a_refresh_whose_answer_is_lost_after_iqm_rotated_is_followed_by_a_login() {
    let h = Harness::with(|b| b.auth_timeout(Duration::from_millis(200))).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);

    // IQM rotates the refresh token, then holds its answer past the layer's auth timeout.
    h.iqm.hold_refresh_answers(Duration::from_millis(500));
    h.auth.renew().await.unwrap();
    h.iqm.hold_refresh_answers(Duration::ZERO);
    assert_eq!(h.get("/x").await.unwrap(), 200);

    assert_eq!(
        h.iqm.refresh_reuses(),
        0,
        "a spent refresh token was presented"
    );
    assert_eq!((h.iqm.logins(), h.iqm.refreshes()), (2, 1));
}

#[tokio::test]
async fn a_refresh_whose_answer_is_cut_off_or_unreadable_is_followed_by_a_login() {
    for answer in [Answer::ResetMidBody, Answer::TruncatedJson] {
        let h = Harness::start().await;
        assert_eq!(h.get("/x").await.unwrap(), 200);

        // The fake rotates the refresh token before it answers so.
        h.iqm.queue_refresh_answers([answer.clone()]);
        h.auth.renew().await.unwrap();
        assert_eq!(h.get("/x").await.unwrap(), 200);

        assert_eq!(h.iqm.refresh_reuses(), 0, "{answer:?}");
        assert_eq!((h.iqm.logins(), h.iqm.refreshes()), (2, 1), "{answer:?}");
    }
}

#[tokio::test]
async fn a_refresh_cut_off_by_the_acquire_timeout_is_followed_by_a_login() {
    let h = Harness::with(|b| b.acquire_timeout(Duration::from_millis(300))).await;
    assert_eq!(h.get("/x").await.unwrap(), 200);

    // IQM rotates, and the acquisition gives up before the answer comes.
    h.iqm.hold_refresh_answers(SECOND);
    let cut_off = h.auth.renew().await;
    assert!(
        matches!(cut_off, Err(AuthError::BudgetExhausted(_))),
        "{cut_off:?}"
    );
    h.iqm.hold_refresh_answers(Duration::ZERO);

    // The next renewal (here for a revocation) must not present the refresh token again.
    h.iqm.revoke_all_access_tokens();
    assert_eq!(h.get("/x").await.unwrap(), 200);

    assert_eq!(
        h.iqm.refresh_reuses(),
        0,
        "a spent refresh token was presented"
    );
    assert_eq!((h.iqm.logins(), h.iqm.refreshes()), (2, 1));
}
