//! How the shared session reaches Redis: one connection, made on first use, every script call
//! bounded by the command timeout, and every error shown without the URL's password.

use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};

use crate::fleet::CoordinatorError;

/// A Redis deployment as the session talks to it.
pub(super) struct Connection {
    client: Client,
    /// The URL's password, cut out of any Redis error before it is shown.
    password: Option<String>,
    manager: Mutex<Option<ConnectionManager>>,
    command_timeout: Duration,
}

impl Connection {
    pub(super) fn new(client: Client, command_timeout: Duration) -> Self {
        let password = client.get_connection_info().redis_settings().password();
        Self {
            password: password.map(str::to_owned),
            client,
            manager: Mutex::new(None),
            command_timeout,
        }
    }

    fn manager(&self) -> Result<ConnectionManager, CoordinatorError> {
        let mut manager = self.manager.lock();
        if let Some(manager) = manager.as_ref() {
            return Ok(manager.clone());
        }
        let timeout = Some(self.command_timeout);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(1);
        let created = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(|err| self.error(&err))?;
        *manager = Some(created.clone());
        Ok(created)
    }

    /// A Redis error as shown in logs: its kind and message, never the URL's password.
    fn error(&self, err: &redis::RedisError) -> CoordinatorError {
        let mut shown = format!("{:?}: {err}", err.kind());
        if let Some(password) = self.password.as_deref().filter(|p| !p.is_empty()) {
            shown = shown.replace(password, "[redacted]");
        }
        CoordinatorError(shown)
    }

    /// Runs `script` on `keys` (full key names) with `args`, within the command timeout.
    pub(super) async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[&[u8]],
    ) -> Result<T, CoordinatorError> {
        let mut connection = self.manager()?;
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        let call = invocation.invoke_async(&mut connection);
        match tokio::time::timeout(self.command_timeout, call).await {
            Ok(result) => result.map_err(|err| self.error(&err)),
            Err(_) => Err(CoordinatorError(format!(
                "no answer within {:?}",
                self.command_timeout
            ))),
        }
    }
}
