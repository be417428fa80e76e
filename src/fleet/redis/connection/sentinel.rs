//! A primary found through Sentinel, and found again after a failover.
//!
//! The sentinels are asked for the named primary on first use (the `redis` crate's
//! [`SentinelClient`] also checks that the node answers `ROLE` as a primary), one after another
//! within the command timeout (each an equal share of the time left), starting with the one
//! that answered last, so that a sentinel on a lost host costs a share of one call's timeout,
//! not every call. The connection to the primary is kept. It is dropped, and the primary asked
//! of the sentinels again on the next call:
//! - when a sentinel announces a failover (`+switch-master` for this master): a task watches
//!   the sentinels from the first call on, so the fleet's calls go to the new primary as soon
//!   as the failover completes, without a failed call first;
//! - after a connection error or a call that timed out (the call fails: it may have run);
//! - after a `READONLY` answer (a former primary, now a replica): that call ran no write, so
//!   it is sent once more, to the primary found again.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, RedisConnectionInfo,
    ScriptInvocation, ServerErrorKind, TlsMode,
};

/// The channel on which sentinels announce a new primary: `<name> <old ip> <old port> <new ip>
/// <new port>`.
const SWITCH_MASTER: &str = "+switch-master";

/// How long the watcher waits before trying the sentinels again once none answered.
const WATCH_RETRY: Duration = Duration::from_secs(1);

/// How often the watcher checks that its sentinel still answers.
const WATCH_PING: Duration = Duration::from_secs(5);

pub(super) struct Sentinel {
    /// One client per sentinel, each asking only its own; one call asks at a time, the others
    /// wait for its answer.
    clients: tokio::sync::Mutex<Vec<SentinelClient>>,
    /// The sentinel that answered last, asked first.
    preferred: AtomicUsize,
    shared: Arc<Shared>,
    /// The sentinels, for the watcher's subscriptions.
    sentinels: Vec<ConnectionInfo>,
    master: String,
    connection_config: AsyncConnectionConfig,
    command_timeout: Duration,
    watcher: Mutex<Option<tokio::task::AbortHandle>>,
}

/// What the watcher shares with the calls: the connection to the current primary.
#[derive(Default)]
struct Shared {
    primary: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// Numbers the connections, so that a call drops only the one it used.
    made: AtomicU64,
    /// Counts the times the primary was forgotten: an answer asked for before the last time
    /// (a failover announced while the sentinels were being asked) is used once, not kept.
    forgotten: AtomicU64,
}

impl Shared {
    fn forget(&self, id: Option<u64>) {
        let mut primary = self.primary.lock();
        if id.is_none() || primary.as_ref().map(|(current, _)| *current) == id {
            *primary = None;
            self.forgotten.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Sentinel {
    /// The sentinels at `sentinels`, watching the primary named `master`. The URLs' user and
    /// password are used for the sentinels and the primary alike, their database for the
    /// primary only (sentinels have none). Sends nothing.
    pub(super) fn new(
        sentinels: Vec<ConnectionInfo>,
        master: &str,
        command_timeout: Duration,
    ) -> redis::RedisResult<Self> {
        let Some(first) = sentinels.first() else {
            return Err((redis::ErrorKind::EmptySentinelList, "no sentinel").into());
        };
        let settings = first.redis_settings();
        let mut primary = RedisConnectionInfo::default().set_db(settings.db());
        if let Some(username) = settings.username() {
            primary = primary.set_username(username);
        }
        if let Some(password) = settings.password() {
            primary = primary.set_password(password);
        }
        let mut node = SentinelNodeConnectionInfo::default().set_redis_connection_info(primary);
        if let ConnectionAddr::TcpTls { insecure, .. } = first.addr() {
            node = node.set_tls_mode(if *insecure {
                TlsMode::Insecure
            } else {
                TlsMode::Secure
            });
        }
        let sentinels: Vec<ConnectionInfo> = sentinels
            .into_iter()
            .map(|info| {
                let settings = info.redis_settings().clone().set_db(0);
                info.set_redis_settings(settings)
            })
            .collect();
        let clients = sentinels
            .iter()
            .map(|sentinel| {
                let client = SentinelClient::build(
                    vec![sentinel.clone()],
                    master,
                    Some(node.clone()),
                    SentinelServerType::Master,
                )?;
                Ok(client)
            })
            .collect::<redis::RedisResult<_>>()?;
        let timeout = Some(command_timeout);
        Ok(Self {
            clients: tokio::sync::Mutex::new(clients),
            preferred: AtomicUsize::new(0),
            shared: Arc::default(),
            sentinels,
            master: master.to_owned(),
            connection_config: AsyncConnectionConfig::new()
                .set_connection_timeout(timeout)
                .set_response_timeout(timeout),
            command_timeout,
            watcher: Mutex::new(None),
        })
    }

    /// Drops the connection to the primary: the next call asks the sentinels again.
    pub(super) fn forget_primary(&self) {
        self.shared.forget(None);
    }

    /// The connection to the current primary, asking the sentinels for it if there is none.
    async fn primary(&self) -> redis::RedisResult<(u64, MultiplexedConnection)> {
        if let Some(primary) = self.shared.primary.lock().clone() {
            return Ok(primary);
        }
        let mut clients = self.clients.lock().await;
        // Another call may have found it while this one waited.
        if let Some(primary) = self.shared.primary.lock().clone() {
            return Ok(primary);
        }
        let forgotten = self.shared.forgotten.load(Ordering::SeqCst);
        let count = clients.len();
        let first = self.preferred.load(Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + self.command_timeout;
        let mut last = None;
        for (asked, index) in (first..first + count).map(|i| i % count).enumerate() {
            let Some(client) = clients.get_mut(index) else {
                continue;
            };
            // Each sentinel gets an equal share of the time left: one that never answers (its
            // host lost) leaves time to ask the next; the last one gets all that is left.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let share = left / u32::try_from(count - asked).unwrap_or(u32::MAX);
            let answer = async {
                let node = client.async_get_client().await?;
                node.get_multiplexed_async_connection_with_config(&self.connection_config)
                    .await
            };
            match tokio::time::timeout(share, answer).await {
                Ok(Ok(connection)) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    let id = self.shared.made.fetch_add(1, Ordering::Relaxed);
                    let mut primary = self.shared.primary.lock();
                    if self.shared.forgotten.load(Ordering::SeqCst) == forgotten {
                        *primary = Some((id, connection.clone()));
                    }
                    return Ok((id, connection));
                }
                Ok(Err(err)) => last = Some(err),
                Err(_) => last = Some(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
            }
        }
        Err(last.unwrap_or_else(|| (redis::ErrorKind::EmptySentinelList, "no sentinel").into()))
    }

    /// Runs the script on the current primary (see the module's comment for failovers).
    pub(super) async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> redis::RedisResult<T> {
        self.watch();
        let (id, mut connection) = self.primary().await?;
        match invocation.invoke_async(&mut connection).await {
            Err(err) if err.kind() == ServerErrorKind::ReadOnly.into() => {
                self.shared.forget(Some(id));
                let (_, mut connection) = self.primary().await?;
                invocation.invoke_async(&mut connection).await
            }
            Err(err) if err.is_io_error() || err.is_unrecoverable_error() => {
                self.shared.forget(Some(id));
                Err(err)
            }
            result => result,
        }
    }

    /// Starts the watcher on first use (it needs the caller's runtime).
    fn watch(&self) {
        let mut watcher = self.watcher.lock();
        if watcher.is_none() {
            let task = tokio::spawn(watch(
                Arc::downgrade(&self.shared),
                self.sentinels.clone(),
                self.master.clone(),
                self.command_timeout,
            ));
            *watcher = Some(task.abort_handle());
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(watcher) = self.watcher.lock().take() {
            watcher.abort();
        }
    }
}

/// Subscribes to one sentinel after another, dropping the primary's connection whenever a
/// failover of `master` is announced, or a sentinel was lost (an announcement may have been
/// missed). Ends when the session is dropped.
async fn watch(
    shared: Weak<Shared>,
    sentinels: Vec<ConnectionInfo>,
    master: String,
    timeout: Duration,
) {
    loop {
        for sentinel in &sentinels {
            let Ok(client) = Client::open(sentinel.clone()) else {
                continue;
            };
            let subscribed = tokio::time::timeout(timeout, async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(SWITCH_MASTER).await?;
                redis::RedisResult::Ok(pubsub)
            });
            let Ok(Ok(pubsub)) = subscribed.await else {
                continue;
            };
            let (mut sink, mut messages) = pubsub.split();
            loop {
                let message = tokio::time::timeout(WATCH_PING, messages.next()).await;
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                match message {
                    Ok(Some(message)) => {
                        let payload: String = message.get_payload().unwrap_or_default();
                        if payload.split(' ').next() == Some(master.as_str()) {
                            tracing::info!(
                                "Sentinel announced a new primary: the shared IQM session follows it"
                            );
                            shared.forget(None);
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        let ping = tokio::time::timeout(timeout, sink.ping::<redis::Value>());
                        if !matches!(ping.await, Ok(Ok(_))) {
                            break;
                        }
                    }
                }
            }
            // The sentinel was lost: a failover may have gone unannounced to this watcher.
            match shared.upgrade() {
                Some(shared) => shared.forget(None),
                None => return,
            }
        }
        tokio::time::sleep(WATCH_RETRY).await;
        if shared.strong_count() == 0 {
            return;
        }
    }
}
