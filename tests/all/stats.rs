//! The counters of `IqmAuth::stats` after known scenarios.

use futures::future::join_all;
use iqm_auth::Stats;
use iqm_auth::testing::Answer;

use crate::support::Harness;

#[tokio::test]
async fn stats_count_logins_refreshes_renewals_by_reason_replays_and_failures() {
    let h = Harness::start().await;
    assert_eq!(h.auth.stats(), Stats::default());

    // First use: ten concurrent callers share one login.
    join_all((0..10).map(|_| h.get("/x"))).await;
    // A 401: one renewal, one replay.
    h.iqm.revoke_all_access_tokens();
    assert_eq!(h.get("/x").await.unwrap(), 200);
    // A forced renewal that fails: refresh refused, login unusable.
    h.iqm.revoke_all_refresh_tokens();
    h.iqm.set_login_answer(Answer::Html);
    h.auth.renew().await.unwrap_err();

    let stats = h.auth.stats();
    assert_eq!(stats.logins, 2);
    assert_eq!(stats.refreshes, 2);
    assert_eq!(stats.renewals_first_use, 1);
    assert_eq!(stats.renewals_unauthorized, 1);
    assert_eq!(stats.renewals_forced, 1);
    assert_eq!(stats.renewals_expired + stats.renewals_proactive, 0);
    assert_eq!(stats.unauthorized_replays, 1);
    assert_eq!(stats.shared_waits, 9);
    assert_eq!(stats.failed_renewals, 1);
    assert_eq!(stats.failures_invalid_response, 1);
    assert_eq!(stats.failures_transient + stats.failures_rejected, 0);
    assert_eq!(stats.store_errors, 0);
}
