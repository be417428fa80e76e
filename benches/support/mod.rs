//! Shared pieces of the benches: the baselines the layer is measured against.

use http::{Extensions, HeaderName, HeaderValue, header::AUTHORIZATION};
use iqm_auth::reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next, Result};
use reqwest::{Request, Response};
use std::sync::Arc;

const OW_ID: HeaderName = HeaderName::from_static("x-iaa-ow-id");

/// Baseline (b): a trivial middleware that inserts a static bearer header.
pub struct StaticBearer(pub HeaderValue, pub HeaderValue);

impl StaticBearer {
    pub fn dummy() -> Self {
        Self(
            HeaderValue::from_static("Bearer x"),
            HeaderValue::from_static("1"),
        )
    }
}

#[async_trait::async_trait]
impl Middleware for StaticBearer {
    async fn handle(
        &self,
        mut req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Result<Response> {
        req.headers_mut().insert(AUTHORIZATION, self.0.clone());
        req.headers_mut().insert(OW_ID, self.1.clone());
        next.run(req, extensions).await
    }
}

/// A terminal middleware that answers 200 without the network.
pub struct Canned;

#[async_trait::async_trait]
impl Middleware for Canned {
    async fn handle(
        &self,
        req: Request,
        _extensions: &mut Extensions,
        _next: Next<'_>,
    ) -> Result<Response> {
        std::hint::black_box(&req);
        Ok(Response::from(http::Response::new(reqwest::Body::from(""))))
    }
}

/// A client whose stack is `layer` (if any) and then `Canned`.
pub fn canned_client(layer: Option<Arc<dyn Middleware>>) -> ClientWithMiddleware {
    let builder = ClientBuilder::new(reqwest::Client::new());
    let builder = match layer {
        Some(layer) => builder.with_arc(layer),
        None => builder,
    };
    builder.with(Canned).build()
}

/// The fake IQM (for the logins) and two layers with a cached token: the default one, and one
/// with the 401 replay switched off.
pub async fn warmed_layers() -> (
    iqm_auth::testing::FakeIqm,
    iqm_auth::IqmAuth,
    iqm_auth::IqmAuth,
) {
    let iqm = iqm_auth::testing::FakeIqm::start().await.expect("fake IQM");
    let auth = iqm.auth_builder().build().expect("config");
    let no_replay = iqm
        .auth_builder()
        .replay_unauthorized(false)
        .build()
        .expect("config");
    auth.access_token().await.expect("login");
    no_replay.access_token().await.expect("login");
    (iqm, auth, no_replay)
}
