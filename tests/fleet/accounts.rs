//! Two accounts on one Redis (issue 15, item 1): a replica adopts only its own account's set,
//! whatever the namespace, and every request carries its own account's token. The fake tells
//! whose token served a request (`user` and `clientId` in its answer); a replica counts the
//! answers served with another account's token as `foreign`.

use super::replica::{ReplicaConfig, Report};
use super::{finish_all, go_all, setup, spawn_all, wait_all};

const OTHER_EMAIL: &str = "billing@acme.example";
const OTHER_PASSWORD: &str = "Other-Horse-2!";
const OTHER_CLIENT_ID: &str = "other-client-id";
const OTHER_CLIENT_SECRET: &str = "other-client-secret";

/// Runs 3 replicas of `a` and 3 of `b` side by side (a, b, a, b, a, b), each with a login
/// phase of 2 requests and, after every access token is revoked, a phase of 3.
fn two_accounts(
    iqm: &iqm_auth::testing::FakeIqm,
    a: &ReplicaConfig,
    b: &ReplicaConfig,
) -> (Vec<Report>, Vec<Report>) {
    let (a, b) = (a.steps("get:2,wait,get:3"), b.steps("get:2,wait,get:3"));
    let mut replicas = spawn_all([a.clone(), b.clone(), a.clone(), b.clone(), a, b]);
    wait_all(&replicas);
    iqm.revoke_all_access_tokens();
    go_all(&mut replicas);
    let reports = finish_all(replicas);
    let of = |parity: usize| {
        reports
            .iter()
            .skip(parity)
            .step_by(2)
            .cloned()
            .collect::<Vec<_>>()
    };
    (of(0), of(1))
}

fn assert_own_tokens_and_one_login_each(
    iqm: &iqm_auth::testing::FakeIqm,
    a: &[Report],
    b: &[Report],
) {
    let sum = |reports: &[Report], field: fn(&Report) -> u64| reports.iter().map(field).sum();
    // Per account: requests 200, requests served with the other account's token, logins.
    // Then logins and refreshes at IQM (one refresh per account after the revocation, each of
    // its own account's set), and spent refresh tokens presented.
    let seen: [u64; 9] = [
        sum(a, |r| r.ok),
        sum(a, |r| r.foreign),
        sum(a, |r| r.logins),
        sum(b, |r| r.ok),
        sum(b, |r| r.foreign),
        sum(b, |r| r.logins),
        iqm.logins(),
        iqm.refreshes(),
        iqm.refresh_reuses(),
    ];
    assert_eq!(
        seen,
        [15, 0, 1, 15, 0, 1, 2, 2, 0],
        "each account logs in once and every request carries its own account's token: \
         A {a:?}, B {b:?}"
    );
}

/// Issue 15, item 1 (one explicit namespace, two accounts): 3 replicas of account A and 3 of
/// account B (another user on the same IQM) with one `namespace("acme-prod")`. The namespace
/// only groups: each account logs in once, renews its own set, and every request carries its
/// own account's token.
#[test]
fn two_users_under_one_explicit_namespace_each_log_in_once_and_send_their_own_tokens() {
    let Some((redis, _rt, iqm)) = setup() else {
        return;
    };
    iqm.add_user(OTHER_EMAIL, OTHER_PASSWORD);
    let mut a = ReplicaConfig::new(&iqm, &redis.url(), "");
    a.namespace = Some("acme-prod".to_owned());
    let mut b = a.clone();
    b.user = Some((OTHER_EMAIL.to_owned(), OTHER_PASSWORD.to_owned()));

    let (a, b) = two_accounts(&iqm, &a, &b);

    assert_own_tokens_and_one_login_each(&iqm, &a, &b);
}

/// Issue 15, item 1 (the default namespace leaves out the client id): 3 replicas of account A
/// and 3 of account B, the same user through another client id, no namespace set. Each
/// account logs in once and every request carries its own account's token.
#[test]
fn two_client_ids_under_the_default_namespace_each_log_in_once_and_send_their_own_tokens() {
    let Some((redis, _rt, iqm)) = setup() else {
        return;
    };
    iqm.add_client(OTHER_CLIENT_ID, OTHER_CLIENT_SECRET);
    let a = ReplicaConfig::new(&iqm, &redis.url(), "");
    let mut b = a.clone();
    b.client = Some((OTHER_CLIENT_ID.to_owned(), OTHER_CLIENT_SECRET.to_owned()));

    let (a, b) = two_accounts(&iqm, &a, &b);

    assert_own_tokens_and_one_login_each(&iqm, &a, &b);
}
