//! The `reqwest_middleware::Middleware` implementation: origin check, header injection and the
//! one-time replay after a 401.
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

use crate::auth::IqmAuth;
use crate::error::AuthError;
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
        let session = &inner.session;
        // Copied before the headers go on, so a replay gets the new token's headers only.
        let replay = if inner.replay_unauthorized {
            copy_for_replay(&request)
        } else {
            None
        };
        let cached = session.usable_now(|token| attach(request.headers_mut(), token));
        match (replay, cached) {
            (Some(copy), _) => {
                Box::pin(send(session, request, cached, Some(copy), extensions, next))
            }
            // Token attached and nothing to replay: the request goes down the stack now, and the
            // future only watches its answer for a 401, so it holds no request at all.
            (None, Some(generation)) => {
                let sent = next.run(request, extensions);
                Box::pin(async move {
                    let response = sent.await?;
                    if response.status() == StatusCode::UNAUTHORIZED {
                        // Handed back as it is; the next request uses the renewed token.
                        let _ = renew_after_401(session, generation).await;
                    } else {
                        session.served(generation);
                    }
                    Ok(response)
                })
            }
            (None, None) => Box::pin(send(session, request, None, None, extensions, next)),
        }
    }
}

/// Sends an IQM request: with the cached token's generation if the hot path attached one, or
/// after waiting for a token; then hands a 401 to [`recover`].
///
/// A plain function returning an `async` block rather than an `async fn`: an `async fn` keeps
/// its arguments twice in its state (rust-lang/rust#62958), which for two `Request`s (264 bytes
/// each) pushed every request's future past the allocator's fast size classes.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would store its arguments twice"
)]
fn send<'a>(
    session: &'a Arc<Session>,
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
                let token = wait_for_token(session).await.map_err(Error::middleware)?;
                attach(request.headers_mut(), &token)
            }
        };
        let response = next.clone().run(request, extensions).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            session.served(generation);
            return Ok(response);
        }
        recover(session, generation, response, replay, extensions, next).await
    }
}

// The two rarely taken paths are boxed in plain functions: awaited inline, their state (or the
// temporaries of an inline `Box::pin(…).await`, which live to the end of the statement) would
// be laid out in the future of every request, pushing it past the allocator's fast size classes.

/// After a 401 to a request sent with token `generation`: renews the token once (shared with
/// every other request that saw the same token), or `None` when the 401 is not the token's
/// fault (see [`Session::unauthorized_is_not_the_tokens_fault`]) and nothing is renewed.
fn renew_after_401(
    session: &Arc<Session>,
    generation: u64,
) -> BoxFuture<'_, Option<std::result::Result<Arc<CachedToken>, AuthError>>> {
    Box::pin(async move {
        if session.unauthorized_is_not_the_tokens_fault(generation) {
            tracing::debug!(
                generation,
                "IQM answered 401 to a token fresh from a 401-driven renewal; not renewing again"
            );
            session.counters.unauthorized_not_renewed();
            return None;
        }
        tracing::debug!(generation, "IQM answered 401; renewing the token");
        Some(
            session
                .renew(RenewReason::Unauthorized, Some(generation))
                .await,
        )
    })
}

fn wait_for_token(
    session: &Arc<Session>,
) -> BoxFuture<'_, std::result::Result<Arc<CachedToken>, AuthError>> {
    Box::pin(session.wait_for_token())
}

/// After a 401 to a request sent with token `generation`: renews the token once (shared with
/// every other request that saw the same token) and replays the request once. A second 401 is
/// handed back as it is: never a loop. So is a 401 that is not the token's fault.
fn recover<'a>(
    session: &'a Arc<Session>,
    generation: u64,
    response: Response,
    replay: Option<Request>,
    extensions: &'a mut Extensions,
    next: Next<'a>,
) -> BoxFuture<'a, Result<Response>> {
    Box::pin(async move {
        let Some(renewed) = renew_after_401(session, generation).await else {
            return Ok(response);
        };
        match (replay, renewed) {
            (Some(mut replay), Ok(token)) => {
                let generation = attach(replay.headers_mut(), &token);
                session.counters.replay();
                let response = next.run(replay, extensions).await?;
                if response.status() != StatusCode::UNAUTHORIZED {
                    session.served(generation);
                }
                Ok(response)
            }
            (Some(_), Err(err)) => Err(Error::middleware(err)),
            // Not replayable (a streaming body, or replay switched off): the 401 goes back to the
            // caller, and the next request uses the renewed token.
            (None, _) => Ok(response),
        }
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
