//! [`IqmAuthBuilder::from_env`]: the builder filled from `IQM_*` environment variables.

use super::IqmAuthBuilder;
use crate::error::ConfigError;

/// The environment variables [`IqmAuth::from_env`] reads; `IQM_BASE_URL` is optional.
const ENV_VARS: [&str; 6] = [
    "IQM_BASE_URL",
    "IQM_CLIENT_ID",
    "IQM_CLIENT_SECRET",
    "IQM_WORKSPACE_HOST",
    "IQM_EMAIL",
    "IQM_PASSWORD",
];

impl IqmAuthBuilder {
    /// A builder filled from the `IQM_*` environment variables (see
    /// [`IqmAuth::from_env`](crate::IqmAuth::from_env)).
    ///
    /// # Errors
    /// [`ConfigError::MissingEnv`] listing every required variable that is unset or empty.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub(super) fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let [base_var, required @ ..] = ENV_VARS;
        let missing: Vec<&'static str> =
            required.into_iter().filter(|n| get(n).is_none()).collect();
        if !missing.is_empty() {
            return Err(ConfigError::MissingEnv(missing));
        }
        let value = |name: &str| get(name).unwrap_or_default();
        let mut builder = Self::default()
            .client_credentials(value("IQM_CLIENT_ID"), value("IQM_CLIENT_SECRET"))
            .workspace_host(value("IQM_WORKSPACE_HOST"))
            .credentials(value("IQM_EMAIL"), value("IQM_PASSWORD"));
        if let Some(base) = get(base_var) {
            builder = builder.base_url(base);
        }
        Ok(builder)
    }
}
