//! The fake IQM's HTTP handlers: what each endpoint checks, counts and answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::answer::Answer;
use super::fake_iqm::{SeenRequest, WORKSPACE_HOST};
use super::server::{Owner, Shape, Shared, envelope_error};

const USER_NOT_ALLOWED: &str = "User doesn't exist or user is not allowed to provided workspace.";

pub(super) async fn login(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = shared.clock.now();
    let (response, usable) = answer_login(&shared, &headers, &body).await;
    shared.auth_call_answered(arrived, usable);
    response
}

/// A login's answer, and whether it carries a usable token set.
async fn answer_login(shared: &Shared, headers: &HeaderMap, body: &Bytes) -> (Response, bool) {
    shared.counters.logins.fetch_add(1, SeqCst);
    if let Some(limited) = shared.rate_limit() {
        return (limited, false);
    }
    let (delay, hold, answer) = {
        let mut knobs = shared.knobs.lock();
        let answer = knobs
            .login_queue
            .pop_front()
            .unwrap_or_else(|| knobs.login_answer.clone());
        (knobs.login_delay, knobs.login_hold, answer)
    };
    tokio::time::sleep(delay).await;
    let Some(client_id) = shared.client(headers) else {
        let refused = envelope_error(StatusCode::UNAUTHORIZED, "Invalid client credentials");
        return (refused, false);
    };
    if headers.get("x-iaa-host").and_then(|v| v.to_str().ok()) != Some(WORKSPACE_HOST) {
        return (
            envelope_error(StatusCode::FORBIDDEN, USER_NOT_ALLOWED),
            false,
        );
    }
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return (
            envelope_error(StatusCode::BAD_REQUEST, "Invalid JSON body"),
            false,
        );
    };
    let (email, password) = (
        body["email"].as_str().unwrap_or_default(),
        body["password"].as_str().unwrap_or_default(),
    );
    if body["grantType"] != "password" || !shared.password_ok(email, password) {
        return (
            envelope_error(StatusCode::FORBIDDEN, USER_NOT_ALLOWED),
            false,
        );
    }
    let owner = Owner {
        client_id,
        email: email.to_owned(),
    };
    let response = shared.issue(&answer, Shape::Login, None, &owner);
    tokio::time::sleep(hold).await;
    (response, answer == Answer::Normal)
}

pub(super) async fn token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    form: Result<axum::Form<HashMap<String, String>>, axum::extract::rejection::FormRejection>,
) -> Response {
    let arrived = shared.clock.now();
    let (response, usable) = answer_refresh(&shared, &headers, form).await;
    shared.auth_call_answered(arrived, usable);
    response
}

/// A refresh call's answer, and whether it carries a usable token set.
async fn answer_refresh(
    shared: &Shared,
    headers: &HeaderMap,
    form: Result<axum::Form<HashMap<String, String>>, axum::extract::rejection::FormRejection>,
) -> (Response, bool) {
    shared.counters.refreshes.fetch_add(1, SeqCst);
    if let Some(limited) = shared.rate_limit() {
        return (limited, false);
    }
    let (delay, hold, answer, rotate) = {
        let mut knobs = shared.knobs.lock();
        let answer = knobs
            .refresh_queue
            .pop_front()
            .unwrap_or_else(|| knobs.refresh_answer.clone());
        (
            knobs.refresh_delay,
            knobs.refresh_hold,
            answer,
            knobs.rotate_refresh_tokens,
        )
    };
    tokio::time::sleep(delay).await;
    let invalid_grant = |description: &str| {
        let response = (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant", "error_description": description})),
        )
            .into_response();
        (response, false)
    };
    let Some(client_id) = shared.client(headers) else {
        let refused = envelope_error(StatusCode::UNAUTHORIZED, "Invalid client credentials");
        return (refused, false);
    };
    let Ok(axum::Form(form)) = form else {
        return invalid_grant("The body is not a form");
    };
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return invalid_grant("Unsupported grant type");
    }
    let Some(presented) = form.get("refresh_token") else {
        return invalid_grant("Missing refresh token");
    };
    let owner = {
        let mut tokens = shared.tokens.lock();
        if !tokens.refresh.contains(presented) {
            if tokens.spent_refresh.contains(presented) {
                shared.counters.refresh_reuses.fetch_add(1, SeqCst);
            }
            return invalid_grant("Invalid refresh token");
        }
        let owner = tokens.owners.get(presented).cloned();
        let Some(owner) = owner.filter(|owner| owner.client_id == client_id) else {
            return invalid_grant("The refresh token was issued to another client");
        };
        if rotate && answer.acts() {
            tokens.refresh.remove(presented);
            tokens.spent_refresh.insert(presented.clone());
        }
        owner
    };
    let keep = (!rotate).then(|| presented.clone());
    let response = shared.issue(&answer, Shape::Refresh, keep, &owner);
    tokio::time::sleep(hold).await;
    (response, answer == Answer::Normal)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

fn live(shared: &Shared, headers: &HeaderMap) -> bool {
    live_owner(shared, headers).is_some()
}

/// The owner of the live bearer token in `headers`, if there is one.
fn live_owner(shared: &Shared, headers: &HeaderMap) -> Option<Owner> {
    let token = bearer(headers)?;
    let tokens = shared.tokens.lock();
    let expires = tokens.access.get(token)?;
    (shared.clock.now() < *expires)
        .then(|| tokens.owners.get(token).cloned())
        .flatten()
}

pub(super) async fn logout(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    shared.counters.logouts.fetch_add(1, SeqCst);
    if let Some(limited) = shared.rate_limit() {
        return limited;
    }
    if !live(&shared, &headers) {
        return envelope_error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    if let Some(token) = bearer(&headers) {
        shared.tokens.lock().access.remove(token);
    }
    axum::Json(json!({"success": true, "data": "User logged out successfully."})).into_response()
}

pub(super) async fn sign_up(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.counters.sign_ups.fetch_add(1, SeqCst);
    if let Some(limited) = shared.rate_limit() {
        return limited;
    }
    let Some(client_id) = shared.client(&headers) else {
        return envelope_error(StatusCode::UNAUTHORIZED, "Invalid client credentials");
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return envelope_error(StatusCode::BAD_REQUEST, "Invalid JSON body");
    };
    let (Some(email), Some(password)) = (body["email"].as_str(), body["password"].as_str()) else {
        return envelope_error(StatusCode::BAD_REQUEST, "email and password are required");
    };
    if !shared.invited.lock().contains(email) {
        return envelope_error(
            StatusCode::FORBIDDEN,
            "User is not invited to this workspace.",
        );
    }
    let strong = password.chars().count() >= 8
        && password.chars().any(|c| c.is_uppercase())
        && password.chars().any(|c| c.is_lowercase())
        && password.chars().any(|c| !c.is_alphanumeric());
    if !strong {
        return envelope_error(
            StatusCode::BAD_REQUEST,
            "Password must have at least 8 characters, one upper-case, one lower-case and one special character.",
        );
    }
    let owner = Owner {
        client_id,
        email: email.to_owned(),
    };
    shared.issue(&Answer::Normal, Shape::SignUp, None, &owner)
}

pub(super) async fn protected_api(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    shared.counters.api_calls.fetch_add(1, SeqCst);
    if let Some(limited) = shared.rate_limit() {
        return limited;
    }
    let headers = request.headers();
    let (redirect, queued) = {
        let mut knobs = shared.knobs.lock();
        let redirect = knobs.redirects.get(request.uri().path()).cloned();
        (redirect, knobs.api_queue.pop_front())
    };
    let ow_ids: Vec<String> = headers
        .get_all("x-iaa-ow-id")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let owner = live_owner(&shared, headers);
    let valid_bearer = owner.is_some();
    shared.seen.lock().push(SeenRequest {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        has_authorization: headers.contains_key(header::AUTHORIZATION),
        valid_bearer,
        ow_ids: ow_ids.clone(),
    });
    if let Some((status, retry_after)) = queued {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut response = envelope_error(status, "Simulated API failure");
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, axum::http::HeaderValue::from(seconds));
        }
        return response;
    }
    if let Some(location) = redirect {
        return (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, location)],
        )
            .into_response();
    }
    let Some(owner) = owner else {
        shared.counters.unauthorized.fetch_add(1, SeqCst);
        return envelope_error(StatusCode::UNAUTHORIZED, "Unauthorized");
    };
    let [ow_id] = ow_ids.as_slice() else {
        return envelope_error(
            StatusCode::BAD_REQUEST,
            "Exactly one X-IAA-OW-ID header is required.",
        );
    };
    if ow_id.parse::<u64>().is_err() {
        return envelope_error(
            StatusCode::BAD_REQUEST,
            "X-IAA-OW-ID must be a workspace id.",
        );
    }
    axum::Json(json!({
        "success": true,
        "data": {
            "method": request.method().as_str(),
            "path": request.uri().path(),
            "owId": ow_id,
            "user": owner.email,
            "clientId": owner.client_id,
        },
    }))
    .into_response()
}
