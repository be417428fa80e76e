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
