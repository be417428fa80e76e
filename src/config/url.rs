//! The base URL: as the user gave it (shown without its user info), and validated.

use reqwest::Url;

use crate::error::ConfigError;

/// The base URL as the user gave it, before validation. `Debug` hides any user info in it (a
/// password), since the builder may be logged before `build()` refuses such a URL.
#[derive(Clone)]
pub(super) struct RawBaseUrl(pub(super) String);

impl std::fmt::Debug for RawBaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&without_user_info(&self.0), f)
    }
}

/// `raw` with everything between `scheme://` and the last `@` of the authority replaced, so
/// that a URL such as `https://user:hunter2@host` can be shown. Works on text that does not
/// parse as a URL too.
pub(crate) fn without_user_info(raw: &str) -> String {
    let (scheme, rest) = match raw.find("://") {
        Some(i) => raw.split_at(i + 3),
        None => ("", raw),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}[redacted]{}", &rest[at..]),
        None => raw.to_owned(),
    }
}

pub(super) fn parse_base_url(raw: &str) -> Result<Url, ConfigError> {
    let invalid = |problem: &str| ConfigError::InvalidBaseUrl {
        url: without_user_info(raw),
        problem: problem.to_owned(),
    };
    let mut url = Url::parse(raw.trim()).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("it must not carry credentials"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("it must not have a query or fragment"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}
