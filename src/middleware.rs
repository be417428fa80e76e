//! The `reqwest_middleware::Middleware` implementation: origin check, header injection, the
//! one-time replay after a 401, and IQM's rate limit (a 429's window, the request rate).
//!
//! The trait is implemented by hand rather than through `#[async_trait]`, so that the work of a
//! request with a valid cached token is done before any future is created, a request that
//! passes through (another origin) costs no allocation at all, and the future of an
//! authenticated request stays small (the rarely taken paths are boxed on their own).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::header::{AUTHORIZATION, Entry, HeaderName};
use http::{Extensions, HeaderMap, StatusCode};
use reqwest::{Request, Response};
use reqwest_middleware::{Error, Middleware, Next, Result};

use crate::auth::{Inner, IqmAuth};
use crate::error::AuthError;
use crate::limit::Kind;
use crate::session::Session;
use crate::stats::RenewReason;
use crate::token::CachedToken;

/// The workspace header IQM requires on every API call.
pub const OW_ID_HEADER: HeaderName = HeaderName::from_static("x-iaa-ow-id");

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Adds the token's headers. A caller-set `X-IAA-OW-ID` (another workspace) is kept. Returns the
/// token's generation, to tell later whether a 401 was for this token or an older one.
fn attach(headers: &mut HeaderMap, token: &CachedToken) -> u64 {
    headers.insert(AUTHORIZATION, token.bearer.clone());
    if let Entry::Vacant(slot) = headers.entry(OW_ID_HEADER) {
        slot.insert(token.ow_id_header.clone());
    }
    token.generation
}

/// The copy of a request kept for a replay after a 401; `None` if the body is a stream.
///
/// Same as `Request::try_clone`, cheaper for the common bodiless request: `try_clone` always
/// builds and throws away an extension map (it sets the timeout on a fresh request before
/// overwriting its extensions). A bodiless request cannot have come from an `http::Request`
/// (those always carry a body), so its only extension is the timeout, which is copied.
fn copy_for_replay(request: &Request) -> Option<Request> {
    if request.body().is_some() {
        return request.try_clone();
    }
    let mut copy = Request::new(request.method().clone(), request.url().clone());
    *copy.headers_mut() = request.headers().clone();
    *copy.version_mut() = request.version();
    if let Some(timeout) = request.timeout() {
        *copy.timeout_mut() = Some(*timeout);
    }
    Some(copy)
}

impl Middleware for IqmAuth {
    fn handle<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        mut request: Request,
        extensions: &'life1 mut Extensions,
        next: Next<'life2>,
    ) -> BoxFuture<'async_trait, Result<Response>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        let inner = &*self.inner;
        if !inner.applies_to(&request) {
            return next.run(request, extensions);
        }
        if inner.session.gated() {
            return Box::pin(send_gated(inner, request, extensions, next));
        }
        // Copied before the headers go on, so a replay gets the new token's headers only.
        let replay = if inner.replay_unauthorized {
            copy_for_replay(&request)
        } else {
            None
        };
        let cached = inner
            .session
            .usable_now(|token| attach(request.headers_mut(), token));
        match (replay, cached) {
            (Some(copy), _) => Box::pin(send(inner, request, cached, Some(copy), extensions, next)),
            // Token attached and nothing to replay: the request goes down the stack now, and the
            // future only watches its answer for a 401, so it holds no request at all.
            (None, Some(generation)) => {
                let sent = next.run(request, extensions);
                Box::pin(async move {
                    let response = sent.await?;
                    match judge(inner, generation, &response) {
                        Verdict::TokenRefused => renew_in_background(inner, generation),
                        Verdict::NotTheTokens => inner.session.counters.unauthorized_not_renewed(),
                        Verdict::Served => {}
                    }
                    Ok(response)
                })
            }
            (None, None) => Box::pin(send(inner, request, None, None, extensions, next)),
        }
    }
}

/// What an answer says about the token it was sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Not a 401: the token served.
    Served,
    /// A 401 from IQM that may be the token's fault (revoked, expired early): renew.
    TokenRefused,
    /// A 401 that says nothing about the token: from another origin (a redirect followed away
    /// from IQM), or from an endpoint that refuses the user whatever the token.
    NotTheTokens,
}

/// Judges an answer, and records what it says of its endpoint.
fn judge(inner: &Inner, generation: u64, response: &Response) -> Verdict {
    let session = &inner.session;
    if response.status() != StatusCode::UNAUTHORIZED {
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            rate_limited(inner, response);
        }
        session.served(response.url());
        return Verdict::Served;
    }
    // Only IQM's own 401 speaks about IQM's token.
    if !inner.is_iqm(response.url()) {
        tracing::debug!("a 401 from another origin than IQM's; not renewing");
        return Verdict::NotTheTokens;
    }
    if session.unauthorized_is_not_the_tokens_fault(response.url(), generation) {
        tracing::debug!(
            generation,
            "IQM answered 401 from an endpoint that refused the renewed token too; not renewing"
        );
        return Verdict::NotTheTokens;
    }
    Verdict::TokenRefused
}

/// Sends an IQM request: with the cached token's generation if the hot path attached one, or
/// after waiting for a token; then hands a 401 that is the token's to [`recover`].
///
/// A plain function returning an `async` block rather than an `async fn`: an `async fn` keeps
/// its arguments twice in its state (rust-lang/rust#62958), which for two `Request`s (264 bytes
/// each) pushed every request's future past the allocator's fast size classes.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would store its arguments twice"
)]
fn send<'a>(
    inner: &'a Inner,
    mut request: Request,
    cached: Option<u64>,
    replay: Option<Request>,
    extensions: &'a mut Extensions,
    next: Next<'a>,
) -> impl Future<Output = Result<Response>> + Send + 'a {
    async move {
        let generation = match cached {
            Some(generation) => generation,
            None => {
                let token = wait_for_token(&inner.session)
                    .await
                    .map_err(Error::middleware)?;
                attach(request.headers_mut(), &token)
            }
        };
        let response = next.clone().run(request, extensions).await?;
        match judge(inner, generation, &response) {
            Verdict::TokenRefused => {
                recover(inner, generation, response, replay, extensions, next).await
            }
            Verdict::NotTheTokens => {
                inner.session.counters.unauthorized_not_renewed();
                Ok(response)
            }
            Verdict::Served => Ok(response),
        }
    }
}

/// IQM answered 429: its window closes here at once, and for the fleet in the background (the
/// 429 goes back to its caller unchanged, without waiting for Redis).
fn rate_limited(inner: &Inner, response: &Response) {
    if !inner.is_iqm(response.url()) {
        return;
    }
    let retry_after = crate::iqm_api::retry_after(response.headers());
    if let Some(closed_for) = inner.session.rate_limited(retry_after) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let session = Arc::clone(&inner.session);
            runtime.spawn(async move { session.share_window(closed_for).await });
        }
    }
}

/// Sends an IQM request through IQM's rate limit: it waits for a closed window to open and for
/// its turn in the request rate (or fails unsent), and takes the token at its turn, so a request
/// that waited never carries a token that expired meanwhile.
///
/// A token is obtained before the turn is taken: a renewal's own auth call goes first, and the
/// request is then sent at its turn. If the token expired while it waited (its renewal failed),
/// the turn goes unused and the request renews and waits again, at most twice.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would store its arguments twice"
)]
fn send_gated<'a>(
    inner: &'a Inner,
    mut request: Request,
    extensions: &'a mut Extensions,
    next: Next<'a>,
) -> impl Future<Output = Result<Response>> + Send + 'a {
    async move {
        let session = &inner.session;
        let replay = if inner.replay_unauthorized {
            copy_for_replay(&request)
        } else {
            None
        };
        let mut tries = 0;
        let generation = loop {
            tries += 1;
            let fetched = match session.usable_now(|_| ()) {
                Some(()) => None,
                None => Some(wait_for_token(session).await.map_err(Error::middleware)?),
            };
            admit(session).await.map_err(Error::middleware)?;
            if let Some(generation) =
                session.usable_now(|token| attach(request.headers_mut(), token))
            {
                break generation;
            }
            // A token that lives no longer than the request that fetched it (`expires_in` 0).
            if let Some(token) = fetched.filter(|_| tries >= 3) {
                break attach(request.headers_mut(), &token);
            }
        };
        let response = next.clone().run(request, extensions).await?;
        match judge(inner, generation, &response) {
            Verdict::TokenRefused => {
                recover(inner, generation, response, replay, extensions, next).await
            }
            Verdict::NotTheTokens => {
                session.counters.unauthorized_not_renewed();
                Ok(response)
            }
            Verdict::Served => Ok(response),
        }
    }
}

fn admit(session: &Session) -> BoxFuture<'_, std::result::Result<(), AuthError>> {
    Box::pin(session.admit(Kind::Api))
}

// The two rarely taken paths are boxed in plain functions: awaited inline, their state (or the
// temporaries of an inline `Box::pin(…).await`, which live to the end of the statement) would
// be laid out in the future of every request, pushing it past the allocator's fast size classes.

/// Starts a renewal after a 401 to token `generation` (shared with every other request that
/// saw the same token) without waiting for it: the 401 goes back to its caller at once, and the
/// next request uses the renewed token.
fn renew_in_background(inner: &Inner, generation: u64) {
    tracing::debug!(
        generation,
        "IQM answered 401; renewing the token in the background"
    );
    inner.session.token_refused(generation);
    inner
        .session
        .start_renewal(RenewReason::Unauthorized, Some(generation));
}

fn wait_for_token(
    session: &Arc<Session>,
) -> BoxFuture<'_, std::result::Result<Arc<CachedToken>, AuthError>> {
    Box::pin(session.wait_for_token())
}

/// After a 401 to a request sent with token `generation`: renews the token once (shared with
/// every other request that saw the same token) and replays the request once, the 401 dropped
/// first so that it holds no connection meanwhile. A second 401 is handed back as it is: never
/// a loop. A request that cannot be replayed gets its 401 at once, the renewal running on.
fn recover<'a>(
    inner: &'a Inner,
    generation: u64,
    response: Response,
    replay: Option<Request>,
    extensions: &'a mut Extensions,
    next: Next<'a>,
) -> BoxFuture<'a, Result<Response>> {
    Box::pin(async move {
        let session = &inner.session;
        let Some(mut replay) = replay else {
            renew_in_background(inner, generation);
            return Ok(response);
        };
        // Not kept through the renewal and the replay: a 401 whose body has not all arrived
        // would hold its connection all that time.
        drop(response);
        tracing::debug!(generation, "IQM answered 401; renewing the token");
        session.token_refused(generation);
        let token = session
            .renew(RenewReason::Unauthorized, Some(generation))
            .await
            .map_err(Error::middleware)?;
        if session.gated() {
            admit(session).await.map_err(Error::middleware)?;
        }
        let generation = attach(replay.headers_mut(), &token);
        session.counters.replay();
        let response = next.run(replay, extensions).await?;
        // Judged for what it proves of the endpoint; a 401 goes back as it is.
        judge(inner, generation, &response);
        Ok(response)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_replay_copy_of_a_bodiless_request_equals_try_clone() {
        let client = reqwest::Client::new();
        let request = client
            .delete("https://api.iqm.com/api/v3/x?y=1")
            .header("x-custom", "1")
            .timeout(Duration::from_secs(3))
            .version(http::Version::HTTP_2)
            .build()
            .unwrap();
        let copy = copy_for_replay(&request).unwrap();
        let clone = request.try_clone().unwrap();
        assert_eq!(copy.method(), clone.method());
        assert_eq!(copy.url(), clone.url());
        assert_eq!(copy.headers(), clone.headers());
        assert_eq!(copy.version(), clone.version());
        assert_eq!(copy.timeout(), Some(&Duration::from_secs(3)));
        assert!(copy.body().is_none());
    }

    #[test]
    fn a_request_with_a_body_is_copied_with_it_and_a_stream_is_not() {
        let client = reqwest::Client::new();
        let request = client
            .post("https://api.iqm.com/x")
            .body("{}")
            .build()
            .unwrap();
        let copy = copy_for_replay(&request).unwrap();
        assert_eq!(
            copy.body().and_then(reqwest::Body::as_bytes),
            Some(&b"{}"[..])
        );
    }
}
