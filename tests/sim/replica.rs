//! A replica: one process of the service, as an `IqmAuth` layer built on the seams the library
//! offers (`auth_api`, `clock`, `jitter_seed`, `shared_session`, `token_store`), in front of
//! the simulated API endpoint. It sends requests, logs out, crashes (everything it runs stops
//! at once: its auth calls, Redis commands and store writes never arrive) and restarts as a
//! new incarnation, with the store it had (if it has one) or with nothing.

use std::future::pending;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use iqm_auth::reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use iqm_auth::{Clock, IqmAuth, MemoryTokenStore, StoreError, StoredTokens, TokenStore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::Sim;
use crate::coordinator::{Redis, SimCoordinator};
use crate::iqm::{Iqm, REQUEST_ID_HEADER, SimApiEndpoint, SimAuthApi, Who};

/// The base URL of the simulated IQM: never contacted.
pub const BASE_URL: &str = "http://iqm.sim/";

/// Wall-clock time at the start of every run: a fixed day, so that runs repeat.
fn epoch() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000)
}

/// A replica's clock: the simulated monotonic time, and a wall clock off by the replica's own
/// offset (wall clocks of different machines disagree; monotonic time is per process anyway).
#[derive(Debug)]
pub struct SimClock {
    pub start: Instant,
    pub offset_ms: i64,
}

impl Clock for SimClock {
    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }

    fn wall(&self) -> SystemTime {
        let t = epoch() + Instant::now().duration_since(self.start);
        if self.offset_ms >= 0 {
            t + Duration::from_millis(self.offset_ms as u64)
        } else {
            t - Duration::from_millis(self.offset_ms.unsigned_abs())
        }
    }
}

/// A replica's token store as one incarnation sees it: the replica's disk, which a dead
/// incarnation can no longer write to.
#[derive(Debug)]
struct GatedStore {
    disk: Arc<MemoryTokenStore>,
    alive: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl TokenStore for GatedStore {
    async fn load(&self) -> Result<Option<StoredTokens>, StoreError> {
        if !self.alive.load(Ordering::Relaxed) {
            return pending().await;
        }
        self.disk.load().await
    }
    async fn save(&self, tokens: &StoredTokens) -> Result<(), StoreError> {
        if !self.alive.load(Ordering::Relaxed) {
            return pending().await;
        }
        self.disk.save(tokens).await
    }
    async fn clear(&self) -> Result<(), StoreError> {
        if !self.alive.load(Ordering::Relaxed) {
            return pending().await;
        }
        self.disk.clear().await
    }
}

/// One `reqwest::Client` for every replica of every run: it is never used to send (the last
/// middleware answers), and building one per replica would cost more than a simulated day.
fn http() -> reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(reqwest::Client::new).clone()
}

pub struct Replica {
    pub id: usize,
    pub account: usize,
    pub offset_ms: i64,
    /// Whether it shares its account's session through Redis (else it is a service of one).
    pub shared: bool,
    /// The replica's disk, if it keeps its session there across restarts.
    pub disk: Option<Arc<MemoryTokenStore>>,
    pub incarnation: u32,
    pub who: Option<Who>,
    pub auth: Option<IqmAuth>,
    pub client: Option<ClientWithMiddleware>,
    pub tasks: Vec<JoinHandle<()>>,
    /// When a crashed replica comes back.
    pub restart_at: Option<Instant>,
}

impl Replica {
    pub fn new(id: usize, account: usize, offset_ms: i64, with_store: bool, shared: bool) -> Self {
        Self {
            id,
            account,
            offset_ms,
            shared,
            disk: with_store.then(Arc::default),
            incarnation: 0,
            who: None,
            auth: None,
            client: None,
            tasks: Vec::new(),
            restart_at: None,
        }
    }

    pub fn is_up(&self) -> bool {
        self.who.as_ref().is_some_and(Who::alive)
    }

    /// Starts a new incarnation: a new `IqmAuth` on the replica's disk, if it has one.
    pub fn start(&mut self, sim: &Arc<Sim>, iqm: &Arc<Iqm>, redis: &Arc<Redis>, start: Instant) {
        self.incarnation += 1;
        let who = Who {
            replica: self.id,
            incarnation: self.incarnation,
            account: self.account,
            alive: Arc::new(AtomicBool::new(true)),
        };
        let (email, password, _) = iqm.credentials(self.account);
        let mut builder = IqmAuth::builder()
            .base_url(BASE_URL)
            .client_credentials("sim-client", "sim-secret")
            .workspace_host("acme.iqm.com")
            .credentials(email, password)
            .auth_http_client(http())
            .auth_api(SimAuthApi {
                iqm: Arc::clone(iqm),
                who: who.clone(),
            })
            .clock(Arc::new(SimClock {
                start,
                offset_ms: self.offset_ms,
            }))
            .jitter_seed(sim.seed ^ ((self.id as u64) << 32) ^ u64::from(self.incarnation));
        if self.shared {
            builder = builder.shared_session(SimCoordinator {
                redis: Arc::clone(redis),
                who: who.clone(),
            });
        }
        if let Some(disk) = &self.disk {
            builder = builder.token_store(Arc::new(GatedStore {
                disk: Arc::clone(disk),
                alive: Arc::clone(&who.alive),
            }));
        }
        let auth = builder.build().expect("a valid configuration");
        let client = ClientBuilder::new(http())
            .with(auth.clone())
            .with(SimApiEndpoint {
                iqm: Arc::clone(iqm),
                who: who.clone(),
            })
            .build();
        self.who = Some(who);
        self.auth = Some(auth);
        self.client = Some(client);
        self.restart_at = None;
    }

    /// Sends one request in a task of its own; the checker hears how it ended.
    pub fn send(&mut self, sim: &Arc<Sim>) {
        let (Some(client), Some(who)) = (&self.client, &self.who) else {
            return;
        };
        let id = sim.next_request_id();
        sim.checker.lock().request_started(id, who, sim.seq());
        sim.event(format!("req{id} starts on {}", who.label()));
        let request = client
            .get(format!("{BASE_URL}api/v3/campaigns"))
            .header(REQUEST_ID_HEADER, id.to_string());
        let sim = Arc::clone(sim);
        let alive = Arc::clone(&who.alive);
        self.tasks.retain(|t| !t.is_finished());
        self.tasks.push(tokio::spawn(async move {
            let outcome = match request.send().await {
                Ok(response) => Ok(response.status().as_u16()),
                Err(err) => Err(match &err {
                    reqwest_middleware::Error::Middleware(inner) => format!("{inner}"),
                    other => format!("{other}"),
                }),
            };
            if !alive.load(Ordering::Relaxed) {
                // Its process died: no one hears how it ended.
                return;
            }
            sim.event(format!("req{id} ends: {outcome:?}"));
            sim.checker.lock().request_finished(&sim, id, outcome);
        }));
    }

    /// Calls `logout()` in a task of its own.
    pub fn logout(&mut self, sim: &Arc<Sim>) {
        let (Some(auth), Some(who)) = (self.auth.clone(), self.who.clone()) else {
            return;
        };
        let sim = Arc::clone(sim);
        self.tasks.push(tokio::spawn(async move {
            let index = sim
                .checker
                .lock()
                .logout_began(who.replica, who.incarnation, sim.seq());
            sim.event(format!("{} logout() begins", who.label()));
            let result = auth.logout().await;
            sim.checker
                .lock()
                .logout_returned(who.replica, who.incarnation, index, sim.seq());
            sim.event(format!(
                "{} logout() returned {:?}",
                who.label(),
                result.map_err(|e| e.to_string())
            ));
        }));
    }

    /// The process dies: everything it runs stops, nothing it sends arrives.
    pub fn crash(&mut self, sim: &Sim) {
        if let Some(who) = self.who.take() {
            who.alive.store(false, Ordering::Relaxed);
            sim.checker
                .lock()
                .forget_requests_of(who.replica, who.incarnation);
        }
        for task in self.tasks.drain(..) {
            task.abort();
        }
        if let Some(auth) = self.auth.take() {
            sim.add_stats(&auth.stats());
        }
        self.client = None;
    }
}
