//! The `reqwest_middleware::Middleware` implementation: origin check, header injection and the
//! one-time replay after a 401.

use http::header::{AUTHORIZATION, Entry, HeaderName};
use http::{Extensions, HeaderMap, StatusCode};
use reqwest::{Request, Response};
use reqwest_middleware::{Error, Middleware, Next, Result};

use crate::auth::IqmAuth;
use crate::stats::RenewReason;
use crate::token::CachedToken;

/// The workspace header IQM requires on every API call.
pub const OW_ID_HEADER: HeaderName = HeaderName::from_static("x-iaa-ow-id");

/// Adds the token's headers. A caller-set `X-IAA-OW-ID` (another workspace) is kept. Returns the
/// token's generation, to tell later whether a 401 was for this token or an older one.
fn attach(headers: &mut HeaderMap, token: &CachedToken) -> u64 {
    headers.insert(AUTHORIZATION, token.bearer.clone());
    if let Entry::Vacant(slot) = headers.entry(OW_ID_HEADER) {
        slot.insert(token.ow_id_header.clone());
    }
    token.generation
}

#[async_trait::async_trait]
impl Middleware for IqmAuth {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Result<Response> {
        let inner = &*self.inner;
        if !inner.applies_to(&request) {
            return next.run(request, extensions).await;
        }
        let session = &inner.session;
        // Copied before the headers go on, so a replay gets the new token's headers only.
        let replay = if inner.replay_unauthorized {
            request.try_clone()
        } else {
            None
        };
        let generation = match session.usable_now(|token| attach(request.headers_mut(), token)) {
            Some(generation) => generation,
            None => {
                let token = session.wait_for_token().await.map_err(Error::middleware)?;
                attach(request.headers_mut(), &token)
            }
        };
        let response = next.clone().run(request, extensions).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        tracing::debug!(generation, "IQM answered 401; renewing the token");
        let renewed = session
            .renew(RenewReason::Unauthorized, Some(generation))
            .await;
        match (replay, renewed) {
            (Some(mut replay), Ok(token)) => {
                attach(replay.headers_mut(), &token);
                session.counters.replay();
                // A second 401 is handed back as it is: never a loop.
                next.run(replay, extensions).await
            }
            (Some(_), Err(err)) => Err(Error::middleware(err)),
            // Not replayable (a streaming body, or replay switched off): the 401 goes back to
            // the caller, and the next request uses the renewed token.
            (None, _) => Ok(response),
        }
    }
}
