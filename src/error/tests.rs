//! Unit tests of the error types.

use super::*;

#[test]
fn only_failures_that_can_pass_by_themselves_are_transient() {
    let rejected = |code: u16| AuthError::Rejected {
        endpoint: AuthEndpoint::Login,
        status: StatusCode::from_u16(code).unwrap(),
        messages: Vec::new(),
        retry_after: None,
    };
    for code in [500, 502, 503, 504, 408, 429] {
        assert!(rejected(code).is_transient(), "{code}");
        assert_eq!(rejected(code).class(), FailureClass::Transient);
    }
    for code in [400, 401, 403, 404, 412, 422] {
        assert!(!rejected(code).is_transient(), "{code}");
        assert_eq!(rejected(code).class(), FailureClass::Rejected);
    }
    let invalid = AuthError::invalid(AuthEndpoint::Login, StatusCode::OK, "x");
    assert!(!invalid.is_transient());
    assert_eq!(invalid.class(), FailureClass::InvalidResponse);
}

#[test]
fn a_rejection_names_iqms_own_messages() {
    let err = AuthError::Rejected {
        endpoint: AuthEndpoint::Login,
        status: StatusCode::FORBIDDEN,
        messages: vec![IqmMessage {
            error: "User doesn't exist or user is not allowed to provided workspace.".into(),
            reason: None,
            field: None,
        }],
        retry_after: None,
    };
    assert_eq!(
        err.to_string(),
        "IQM rejected the login call (403 Forbidden): User doesn't exist or user is not \
         allowed to provided workspace."
    );
}

#[test]
fn several_messages_are_joined_with_their_reasons() {
    let err = AuthError::Rejected {
        endpoint: AuthEndpoint::Login,
        status: StatusCode::BAD_REQUEST,
        messages: vec![
            IqmMessage {
                error: "User is not allowed to access provided customer".into(),
                reason: Some("On Hold".into()),
                field: None,
            },
            IqmMessage {
                error: "second".into(),
                reason: None,
                field: Some("email".into()),
            },
        ],
        retry_after: None,
    };
    assert_eq!(
        err.to_string(),
        "IQM rejected the login call (400 Bad Request): User is not allowed to access \
         provided customer (On Hold); second [field: email]"
    );
}

#[test]
fn a_request_refused_unsent_is_throttled_and_says_when_to_try_again() {
    let err = AuthError::RateLimited {
        retry_after: Duration::from_secs(20),
        cause: RateLimitCause::Window,
    };
    assert_eq!(err.class(), FailureClass::Throttled);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(20)));
    assert_eq!(
        (err.status(), err.endpoint(), err.is_transient()),
        (None, None, false)
    );
    assert_eq!(
        err.to_string(),
        "the request to IQM was not sent (IQM answered 429 and its window is closed); the next \
         may go in 20s"
    );
    let later = err.retry_after_at_most(Duration::from_secs(5));
    assert_eq!(later.retry_after(), Some(Duration::from_secs(5)));
}
