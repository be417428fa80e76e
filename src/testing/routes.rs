//! The fake IQM's HTTP handlers: what each endpoint checks, counts and answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::fake_iqm::{Answer, EMAIL, PASSWORD, SeenRequest, WORKSPACE_HOST};
use super::server::{Shape, Shared, basic_ok, envelope_error};

const USER_NOT_ALLOWED: &str = "User doesn't exist or user is not allowed to provided workspace.";

pub(super) async fn login(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.counters.logins.fetch_add(1, SeqCst);
    if let Some(limited) = shared.rate_limit() {
        return limited;
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
    if !basic_ok(&headers) {
        return envelope_error(StatusCode::UNAUTHORIZED, "Invalid client credentials");
    }
    if headers.get("x-iaa-host").and_then(|v| v.to_str().ok()) != Some(WORKSPACE_HOST) {
        return envelope_error(StatusCode::FORBIDDEN, USER_NOT_ALLOWED);
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return envelope_error(StatusCode::BAD_REQUEST, "Invalid JSON body");
    };
    if body["grantType"] != "password" || body["email"] != EMAIL || body["password"] != PASSWORD {
        return envelope_error(StatusCode::FORBIDDEN, USER_NOT_ALLOWED);
    }
    let response = shared.issue(&answer, Shape::Login, None);
    tokio::time::sleep(hold).await;
    response
}

pub(super) async fn token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    form: Result<axum::Form<HashMap<String, String>>, axum::extract::rejection::FormRejection>,
) -> Response {
    shared.counters.refreshes.fetch_add(1, SeqCst);
    if let Some(limited) = shared.rate_limit() {
        return limited;
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
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant", "error_description": description})),
        )
            .into_response()
    };
    if !basic_ok(&headers) {
        return envelope_error(StatusCode::UNAUTHORIZED, "Invalid client credentials");
    }
    let Ok(axum::Form(form)) = form else {
        return invalid_grant("The body is not a form");
    };
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return invalid_grant("Unsupported grant type");
    }
    let Some(presented) = form.get("refresh_token") else {
        return invalid_grant("Missing refresh token");
    };
    {
        let mut tokens = shared.tokens.lock();
        if !tokens.refresh.contains(presented) {
            if tokens.spent_refresh.contains(presented) {
                shared.counters.refresh_reuses.fetch_add(1, SeqCst);
            }
            return invalid_grant("Invalid refresh token");
        }
        if rotate && answer.acts() {
            tokens.refresh.remove(presented);
            tokens.spent_refresh.insert(presented.clone());
        }
    }
    let keep = (!rotate).then(|| presented.clone());
    let response = shared.issue(&answer, Shape::Refresh, keep);
    tokio::time::sleep(hold).await;
    response
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

fn live(shared: &Shared, headers: &HeaderMap) -> bool {
    bearer(headers).is_some_and(|token| {
        shared
            .tokens
            .lock()
            .access
            .get(token)
            .is_some_and(|expires| shared.clock.now() < *expires)
    })
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
    if !basic_ok(&headers) {
        return envelope_error(StatusCode::UNAUTHORIZED, "Invalid client credentials");
    }
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
    shared.issue(&Answer::Normal, Shape::SignUp, None)
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
    let valid_bearer = live(&shared, headers);
    shared.seen.lock().push(SeenRequest {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        has_authorization: headers.contains_key(header::AUTHORIZATION),
        valid_bearer,
        ow_ids: ow_ids.clone(),
    });
    if let Some(status) = queued {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return envelope_error(status, "Simulated API failure");
    }
    if let Some(location) = redirect {
        return (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, location)],
        )
            .into_response();
    }
    if !valid_bearer {
        shared.counters.unauthorized.fetch_add(1, SeqCst);
        return envelope_error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
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
        "data": {"method": request.method().as_str(), "path": request.uri().path(), "owId": ow_id},
    }))
    .into_response()
}
