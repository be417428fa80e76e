use iqm_auth::reqwest_middleware::{self, ClientBuilder, ClientWithMiddleware};
use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;

use iqm_auth::testing::{FakeIqm, ManualClock};
use iqm_auth::{AuthError, IqmAuth, IqmAuthBuilder};

/// How many times the layer tries a transiently failing auth call by default.
pub const ATTEMPTS: u64 = 3;

pub struct Harness {
    pub iqm: FakeIqm,
    pub auth: IqmAuth,
    pub client: ClientWithMiddleware,
}

impl Harness {
    /// A harness whose layer and fake IQM both read a clock the test moves by hand;
    /// `background` switches the background renewer on or off.
    pub async fn with_manual_clock(background: bool) -> (Self, Arc<ManualClock>) {
        Self::with_manual_clock_and(move |b| b.background_renewal(background)).await
    }

    /// Like [`with_manual_clock`](Self::with_manual_clock), with more settings.
    pub async fn with_manual_clock_and(
        configure: impl FnOnce(IqmAuthBuilder) -> IqmAuthBuilder,
    ) -> (Self, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        let iqm = FakeIqm::start_with_clock(clock.clone())
            .await
            .expect("fake IQM starts");
        (Self::over(iqm, configure), clock)
    }

    pub async fn start() -> Self {
        Self::with(|b| b).await
    }

    pub async fn with(configure: impl FnOnce(IqmAuthBuilder) -> IqmAuthBuilder) -> Self {
        let iqm = FakeIqm::start().await.expect("fake IQM starts");
        Self::over(iqm, configure)
    }

    fn over(iqm: FakeIqm, configure: impl FnOnce(IqmAuthBuilder) -> IqmAuthBuilder) -> Self {
        let auth = configure(iqm.auth_builder()).build().expect("valid config");
        let client = client_with(&auth);
        Self { iqm, auth, client }
    }

    /// Like [`with`](Self::with), counting the token sets handed to `on_new_tokens` (which
    /// tells when a renewal has finished).
    pub async fn counting_new_tokens(
        configure: impl FnOnce(IqmAuthBuilder) -> IqmAuthBuilder,
    ) -> (Self, Arc<std::sync::atomic::AtomicUsize>) {
        let announced = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = announced.clone();
        let h = Self::with(move |b| {
            configure(b).on_new_tokens(move |_| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
        })
        .await;
        (h, announced)
    }

    /// GETs `path` on the fake IQM and returns the status.
    pub async fn get(&self, path: &str) -> Result<u16, reqwest_middleware::Error> {
        let response = self.client.get(self.iqm.url(path)).send().await?;
        Ok(response.status().as_u16())
    }
}

pub fn client_with(auth: &IqmAuth) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(auth.clone())
        .build()
}

/// GETs a path on `iqm` through a client of its own over `auth`, and returns the status: for
/// tests with several layers.
pub async fn get_through(iqm: &FakeIqm, auth: &IqmAuth) -> u16 {
    client_with(auth)
        .get(iqm.url("/x"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The `AuthError` inside a middleware error.
pub fn auth_error(err: &reqwest_middleware::Error) -> &AuthError {
    match err {
        reqwest_middleware::Error::Middleware(inner) => inner
            .downcast_ref::<AuthError>()
            .unwrap_or_else(|| panic!("not an AuthError: {inner:?}")),
        other => panic!("not a middleware error: {other:?}"),
    }
}

/// Waits (bounded) until `condition` holds; for work the layer does in the background.
pub async fn eventually(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

impl Harness {
    /// Like [`get`](Self::get), panicking on an error: for many concurrent requests.
    pub async fn get_owned(&self, path: String) -> u16 {
        self.get(&path).await.expect("request succeeds")
    }
}

/// Everything the layer logs while [`install`](Self::install)ed, at TRACE level, as text.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Captures this thread's events until the guard is dropped.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(self.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
