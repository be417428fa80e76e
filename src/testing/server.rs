//! The fake IQM's state: its knobs, counters and tokens, its rate limit, and how it renders a
//! token answer in each of its shapes and faults. The handlers are in `routes.rs`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::clock::Clock;

use super::answer::Answer;
use super::fake_iqm::{CLIENT_ID, CLIENT_SECRET, EMAIL, OW_ID, PASSWORD, SeenRequest};
use super::limits::Call;

#[derive(Debug)]
pub(super) struct Knobs {
    pub(super) token_lifetime: Duration,
    pub(super) expires_in: Option<Value>,
    pub(super) login_delay: Duration,
    pub(super) refresh_delay: Duration,
    pub(super) login_hold: Duration,
    pub(super) refresh_hold: Duration,
    pub(super) login_answer: Answer,
    pub(super) refresh_answer: Answer,
    pub(super) login_queue: VecDeque<Answer>,
    pub(super) refresh_queue: VecDeque<Answer>,
    pub(super) rotate_refresh_tokens: bool,
    pub(super) redirects: HashMap<String, String>,
    /// Statuses for the next API calls, each with the `Retry-After` seconds to send, if any.
    pub(super) api_queue: VecDeque<(u16, Option<u64>)>,
    pub(super) rate_limit: Option<u32>,
    /// The window the rate limit counts calls over.
    pub(super) rate_limit_window: Duration,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            token_lifetime: Duration::from_secs(3600),
            expires_in: None,
            login_delay: Duration::ZERO,
            refresh_delay: Duration::ZERO,
            login_hold: Duration::ZERO,
            refresh_hold: Duration::ZERO,
            login_answer: Answer::Normal,
            refresh_answer: Answer::Normal,
            login_queue: VecDeque::new(),
            refresh_queue: VecDeque::new(),
            rotate_refresh_tokens: true,
            redirects: HashMap::new(),
            api_queue: VecDeque::new(),
            rate_limit: None,
            rate_limit_window: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) logins: AtomicU64,
    pub(super) refreshes: AtomicU64,
    pub(super) logouts: AtomicU64,
    pub(super) sign_ups: AtomicU64,
    pub(super) api_calls: AtomicU64,
    pub(super) unauthorized: AtomicU64,
    pub(super) rate_limited: AtomicU64,
    pub(super) refresh_reuses: AtomicU64,
    /// Login and refresh calls answered with a usable token set.
    pub(super) good_auth_answers: AtomicU64,
}

#[derive(Debug, Default)]
pub(super) struct Tokens {
    /// Live access tokens and when they expire on the fake's clock.
    pub(super) access: HashMap<String, Instant>,
    pub(super) refresh: HashSet<String>,
    /// Refresh tokens rotated away: presenting one again is a reuse.
    pub(super) spent_refresh: HashSet<String>,
    /// Whom each access and refresh token ever issued belongs to.
    pub(super) owners: HashMap<String, Owner>,
    pub(super) next: u64,
}

/// The account a token was issued to: the client that asked for it and the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Owner {
    pub(super) client_id: String,
    pub(super) email: String,
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) clock: Arc<dyn Clock>,
    pub(super) knobs: Mutex<Knobs>,
    pub(super) counters: Counters,
    pub(super) tokens: Mutex<Tokens>,
    pub(super) invited: Mutex<HashSet<String>>,
    pub(super) seen: Mutex<Vec<SeenRequest>>,
    /// When the calls admitted within the last minute arrived, for the rate limit.
    pub(super) admitted: Mutex<VecDeque<Instant>>,
    /// The client credentials accepted, by client id.
    pub(super) clients: Mutex<HashMap<String, String>>,
    /// The users who may log in, with their passwords, by email.
    pub(super) users: Mutex<HashMap<String, String>>,
    /// When each login or refresh call that got no usable token set arrived.
    pub(super) failed_auth_arrivals: Mutex<Vec<Instant>>,
    /// Every call received, in the order they were answered.
    pub(super) calls: Mutex<Vec<Call>>,
}

/// The shape of a token answer: each endpoint answers its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// `{"success": true, "data": {…, "owId"}}`
    Login,
    /// A bare OAuth answer, no envelope and no `owId`.
    Refresh,
    /// `{"success": true, "data": {…}}` without `owId`.
    SignUp,
}

pub(super) fn envelope_error(status: StatusCode, error: &str) -> Response {
    (
        status,
        axum::Json(json!({"success": false, "errorObjects": [{"error": error}]})),
    )
        .into_response()
}

impl Shared {
    pub(super) fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            knobs: Mutex::default(),
            counters: Counters::default(),
            tokens: Mutex::default(),
            invited: Mutex::default(),
            seen: Mutex::default(),
            admitted: Mutex::default(),
            clients: Mutex::new(HashMap::from([(
                CLIENT_ID.to_owned(),
                CLIENT_SECRET.to_owned(),
            )])),
            users: Mutex::new(HashMap::from([(EMAIL.to_owned(), PASSWORD.to_owned())])),
            failed_auth_arrivals: Mutex::default(),
            calls: Mutex::default(),
        }
    }

    /// The client id of the Basic client credentials in `headers`, if the fake accepts them.
    pub(super) fn client(&self, headers: &HeaderMap) -> Option<String> {
        let encoded = headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Basic ")?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        let (id, secret) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
        (self.clients.lock().get(id).map(String::as_str) == Some(secret)).then(|| id.to_owned())
    }

    /// Whether `email` may log in with `password`.
    pub(super) fn password_ok(&self, email: &str, password: &str) -> bool {
        self.users.lock().get(email).map(String::as_str) == Some(password)
    }

    /// Records a login or refresh call that arrived at `arrived`, if it got no usable set.
    pub(super) fn auth_call_answered(&self, arrived: Instant, usable: bool) {
        if !usable {
            self.failed_auth_arrivals.lock().push(arrived);
        }
    }

    /// Admits a call under the rate limit, or answers it 429.
    pub(super) fn rate_limit(&self) -> Option<Response> {
        let (limit, window) = {
            let knobs = self.knobs.lock();
            (knobs.rate_limit?, knobs.rate_limit_window)
        };
        let now = self.clock.now();
        let mut admitted = self.admitted.lock();
        while admitted
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            admitted.pop_front();
        }
        if admitted.len() < usize::try_from(limit).unwrap_or(usize::MAX) {
            admitted.push_back(now);
            return None;
        }
        self.counters.rate_limited.fetch_add(1, SeqCst);
        let free_in = admitted.front().map_or(Duration::ZERO, |oldest| {
            window.saturating_sub(now.duration_since(*oldest))
        });
        let seconds = free_in.as_secs() + u64::from(free_in.subsec_nanos() > 0);
        let mut response = envelope_error(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        Some(response)
    }

    /// Issues a token set to `owner` and answers it in `shape`, the way `answer` says.
    /// `kept_refresh` is the refresh token a non-rotating refresh answers with again.
    pub(super) fn issue(
        &self,
        answer: &Answer,
        shape: Shape,
        kept_refresh: Option<String>,
        owner: &Owner,
    ) -> Response {
        let (lifetime, expires_in) = {
            let knobs = self.knobs.lock();
            let expires_in = knobs
                .expires_in
                .clone()
                .unwrap_or_else(|| expires_in_of(knobs.token_lifetime));
            (knobs.token_lifetime, expires_in)
        };
        let (access, refresh) = {
            let mut tokens = self.tokens.lock();
            tokens.next += 1;
            let n = tokens.next;
            let access = format!("access-{n:04}-{:016x}", random_u64());
            let refresh =
                kept_refresh.unwrap_or_else(|| format!("refresh-{n:04}-{:016x}", random_u64()));
            let expires = self.clock.now().checked_add(lifetime);
            if let Some(expires) = expires {
                tokens.access.insert(access.clone(), expires);
            }
            tokens.refresh.insert(refresh.clone());
            tokens.owners.insert(access.clone(), owner.clone());
            tokens.owners.insert(refresh.clone(), owner.clone());
            (access, refresh)
        };
        let mut data = json!({
            "access_token": access,
            "refresh_token": refresh,
            "scope": "read write",
            "token_type": "bearer",
            "expires_in": expires_in,
        });
        if shape == Shape::Login {
            data["owId"] = json!(OW_ID);
        }
        let raw = |body: String| (StatusCode::OK, body).into_response();
        match answer {
            Answer::Normal => {
                if shape != Shape::SignUp {
                    self.counters.good_auth_answers.fetch_add(1, SeqCst);
                }
            }
            Answer::Status(code) => {
                let status =
                    StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return envelope_error(status, "Simulated failure");
            }
            Answer::StatusRetryAfter(code, seconds) => {
                let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
                let mut response = envelope_error(status, "Simulated failure");
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*seconds));
                return response;
            }
            Answer::TruncatedJson => {
                return raw(r#"{"success":true,"data":{"access_token":"abc"#.to_owned());
            }
            Answer::Html => {
                return (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "text/html")],
                    "<html><body><h1>Maintenance</h1></body></html>",
                )
                    .into_response();
            }
            Answer::ErrorEnvelope => {
                return envelope_error(StatusCode::OK, "Simulated error in a 200");
            }
            Answer::MissingAccessToken => {
                data.as_object_mut().map(|d| d.remove("access_token"));
            }
            Answer::EmptyAccessToken => data["access_token"] = json!(""),
            Answer::HeaderInjection => data["access_token"] = json!("abc\r\nX-Injected: yes"),
            Answer::MissingOwId => {
                data.as_object_mut().map(|d| d.remove("owId"));
            }
            Answer::Raw(body) => return raw(body.clone()),
            Answer::Page {
                status,
                size,
                retry_after,
            } => {
                let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
                let filler = "<p>Service unavailable</p>".repeat(size / 26 + 1);
                let page = format!("<html><body>{filler}</body></html>");
                let mut response = (
                    status,
                    [(header::CONTENT_TYPE, "text/html")],
                    page[..(*size).min(page.len())].to_owned(),
                )
                    .into_response();
                if let Some(seconds) = retry_after {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(*seconds));
                }
                return response;
            }
            Answer::ResetMidBody => {
                let chunks: [Result<&'static str, io::Error>; 2] = [
                    Ok(r#"{"success":true,"data":{"access_token":"#),
                    Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "cut by the fake",
                    )),
                ];
                let body = axum::body::Body::from_stream(futures_util::stream::iter(chunks));
                return (StatusCode::OK, body).into_response();
            }
        }
        let body = match shape {
            Shape::Login | Shape::SignUp => json!({"success": true, "data": data}),
            Shape::Refresh => data,
        };
        (StatusCode::OK, axum::Json(body)).into_response()
    }
}

/// Whole seconds as IQM sends them; a sub-second test lifetime as a float.
fn expires_in_of(lifetime: Duration) -> Value {
    if lifetime.subsec_nanos() == 0 {
        json!(lifetime.as_secs())
    } else {
        json!(lifetime.as_secs_f64())
    }
}

/// Token material that differs between runs, without a dependency for it.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}
