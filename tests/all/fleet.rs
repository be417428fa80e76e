//! Layers sharing one session through an in-memory coordinator: the fleet protocol without
//! Redis (the process-level fleet tests are in `tests/fleet.rs`).

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use iqm_auth::testing::{Answer, FakeIqm, ManualClock};
use iqm_auth::{IqmAuth, MemoryCoordinator};

use crate::support::get_through;

fn replicas(iqm: &FakeIqm, fleet: &MemoryCoordinator, n: usize) -> Vec<IqmAuth> {
    (0..n)
        .map(|_| {
            iqm.auth_builder()
                .shared_session(fleet.clone())
                .background_renewal(false)
                .build()
                .unwrap()
        })
        .collect()
}

#[tokio::test]
async fn a_cold_fleet_logs_in_once() {
    let iqm = FakeIqm::start().await.unwrap();
    iqm.set_login_delay(Duration::from_millis(100));
    let fleet = MemoryCoordinator::default();
    let replicas = replicas(&iqm, &fleet, 8);

    let statuses = join_all(replicas.iter().map(|auth| get_through(&iqm, auth))).await;

    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(iqm.logins(), 1);
    let adopted: u64 = replicas.iter().map(|a| a.stats().shared_adoptions).sum();
    assert_eq!(adopted, 7);
}

#[tokio::test]
async fn a_401_storm_costs_one_renewal_for_the_fleet() {
    let iqm = FakeIqm::start().await.unwrap();
    let fleet = MemoryCoordinator::default();
    let replicas = replicas(&iqm, &fleet, 6);
    for auth in &replicas {
        assert_eq!(get_through(&iqm, auth).await, 200);
    }
    iqm.revoke_all_access_tokens();

    let statuses = join_all(replicas.iter().map(|auth| get_through(&iqm, auth))).await;

    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!((iqm.logins(), iqm.refreshes()), (1, 1));
    assert_eq!(iqm.unauthorized(), 6);
    assert_eq!(iqm.refresh_reuses(), 0);
}

#[tokio::test]
async fn proactive_renewal_happens_once_per_lifetime_for_the_fleet() {
    let clock = Arc::new(ManualClock::new());
    let iqm = FakeIqm::start_with_clock(clock.clone()).await.unwrap();
    let fleet = MemoryCoordinator::default();
    let replicas = replicas(&iqm, &fleet, 5);
    for auth in &replicas {
        assert_eq!(get_through(&iqm, auth).await, 200);
    }

    for _ in 0..3 {
        // Within every replica's jittered margin (30 to 60 s before expiry), still valid.
        clock.advance(Duration::from_secs(3600 - 20));
        for auth in &replicas {
            assert_eq!(get_through(&iqm, auth).await, 200);
        }
        // Each replica's early renewal runs in the background; let them finish.
        for auth in &replicas {
            auth.access_token().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        clock.advance(Duration::from_secs(20));
        for auth in &replicas {
            assert_eq!(get_through(&iqm, auth).await, 200);
        }
    }

    assert_eq!((iqm.logins(), iqm.refreshes()), (1, 3));
    assert_eq!(iqm.unauthorized(), 0);
}

#[tokio::test]
async fn a_logout_ends_the_session_for_the_fleet() {
    let iqm = FakeIqm::start().await.unwrap();
    let fleet = MemoryCoordinator::default();
    let replicas = replicas(&iqm, &fleet, 4);
    for auth in &replicas {
        assert_eq!(get_through(&iqm, auth).await, 200);
    }

    replicas[0].logout().await.unwrap();
    let statuses = join_all(replicas.iter().map(|auth| get_through(&iqm, auth))).await;

    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!((iqm.logins(), iqm.refreshes(), iqm.logouts()), (2, 0, 1));
}

#[tokio::test]
async fn two_accounts_on_one_coordinator_never_share_a_session() {
    let first = FakeIqm::start().await.unwrap();
    let second = FakeIqm::start().await.unwrap();
    let fleet = MemoryCoordinator::default();
    let a = replicas(&first, &fleet, 1).remove(0);
    let b = replicas(&second, &fleet, 1).remove(0);

    assert_eq!(get_through(&first, &a).await, 200);
    assert_eq!(get_through(&second, &b).await, 200);

    assert_eq!((first.logins(), second.logins()), (1, 1));
    assert_eq!(b.stats().shared_adoptions, 0);
}

#[tokio::test]
async fn an_outage_costs_the_auth_calls_of_one_replica_not_of_the_fleet() {
    let iqm = FakeIqm::start().await.unwrap();
    iqm.set_login_answer(Answer::Status(503));
    let fleet = MemoryCoordinator::default();
    let replicas = replicas(&iqm, &fleet, 6);

    let results = join_all(replicas.iter().map(|auth| auth.access_token())).await;

    assert!(results.iter().all(Result::is_err));
    // The holder's renewal: its 3 tries. The others wait for it, then find the fleet paused.
    assert_eq!(iqm.logins(), 3);
    let paused = results
        .iter()
        .filter(|r| {
            matches!(r, Err(iqm_auth::AuthError::CallBudgetExhausted { retry_after }) if *retry_after <= Duration::from_secs(2))
        })
        .count();
    assert_eq!(paused, 5);
}
