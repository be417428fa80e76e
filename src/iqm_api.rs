//! The HTTP calls to IQM's auth endpoints, and the reading of their JSON answers: the
//! [`AuthApi`] every layer uses unless told otherwise.
//!
//! These calls go through a plain `reqwest::Client` of their own (never the caller's middleware
//! stack, so they cannot recurse into the middleware), never follow redirects, and read at most
//! [`MAX_AUTH_BODY_BYTES`] of an answer. The session bounds each by its `auth_timeout`.

use std::time::Duration;

use http::HeaderValue;
use reqwest::{RequestBuilder, StatusCode, Url};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::auth_api::AuthApi;
use crate::error::{AuthEndpoint, AuthError, ConfigError, IqmMessage};
use crate::secret::Secret;
use crate::token::{TokenSet, check_token_bytes, lifetime_from_expires_in};

/// The largest auth answer read into memory. IQM's token answers are a few hundred bytes.
pub(crate) const MAX_AUTH_BODY_BYTES: usize = 64 * 1024;

pub(crate) const LOGIN_PATH: &str = "api/v3/ua/login";
pub(crate) const TOKEN_PATH: &str = "api/v3/ua/oauth/token";
pub(crate) const LOGOUT_PATH: &str = "api/v3/ua/logout";
pub(crate) const SIGN_UP_PATH: &str = "api/v3/ua/sign-up";

/// The header that names the workspace host on login.
pub(crate) const WORKSPACE_HOST_HEADER: &str = "x-iaa-host";

/// Client to IQM's auth endpoints.
pub(crate) struct IqmApi {
    http: reqwest::Client,
    login_url: Url,
    token_url: Url,
    logout_url: Url,
    sign_up_url: Url,
    client_id: String,
    client_secret: Secret,
    workspace_host: HeaderValue,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LoginBody<'a> {
    grant_type: &'static str,
    email: &'a str,
    password: &'a str,
}

#[derive(Serialize)]
struct SignUpBody<'a> {
    email: &'a str,
    password: &'a str,
}

impl IqmApi {
    /// `base` must end with `/` so that the endpoint paths join below it.
    pub(crate) fn new(
        http: reqwest::Client,
        base: &Url,
        client_id: String,
        client_secret: Secret,
        workspace_host: HeaderValue,
    ) -> Result<Self, ConfigError> {
        let join = |path: &str| {
            base.join(path).map_err(|e| ConfigError::InvalidBaseUrl {
                url: base.to_string(),
                problem: e.to_string(),
            })
        };
        Ok(Self {
            http,
            login_url: join(LOGIN_PATH)?,
            token_url: join(TOKEN_PATH)?,
            logout_url: join(LOGOUT_PATH)?,
            sign_up_url: join(SIGN_UP_PATH)?,
            client_id,
            client_secret,
            workspace_host,
        })
    }

    fn basic(&self, request: RequestBuilder) -> RequestBuilder {
        // reqwest marks the Basic header value sensitive.
        request.basic_auth(&self.client_id, Some(self.client_secret.expose()))
    }

    /// Sends one auth call; a non-2xx answer becomes [`AuthError::Rejected`].
    async fn send(
        &self,
        endpoint: AuthEndpoint,
        request: RequestBuilder,
    ) -> Result<(StatusCode, Vec<u8>), AuthError> {
        let mut response = request
            .send()
            .await
            .map_err(|e| AuthError::transport(endpoint, e))?;
        let status = response.status();
        if !status.is_success() {
            // The status decides what a failure is (transient or not, and when to try again),
            // whatever the body: a 503 with a large HTML page is still a 503.
            let retry_after = retry_after(response.headers());
            let body = read_capped(endpoint, status, &mut response)
                .await
                .unwrap_or_default();
            return Err(rejection(endpoint, status, &body, retry_after));
        }
        let body = read_capped(endpoint, status, &mut response).await?;
        Ok((status, body))
    }
}

#[async_trait::async_trait]
impl AuthApi for IqmApi {
    /// Password login. The answer must carry an `owId`.
    async fn login(&self, email: &str, password: &Secret) -> Result<TokenSet, AuthError> {
        let endpoint = AuthEndpoint::Login;
        let request = self
            .basic(self.http.post(self.login_url.clone()))
            .header(WORKSPACE_HOST_HEADER, self.workspace_host.clone())
            .json(&LoginBody {
                grant_type: "password",
                email,
                password: password.expose(),
            });
        let (status, body) = self.send(endpoint, request).await?;
        let set = parse_token_answer(endpoint, status, &body)?;
        if set.ow_id.is_none() {
            return Err(AuthError::invalid(
                endpoint,
                status,
                "the answer has no owId",
            ));
        }
        Ok(set)
    }

    /// The refresh-token grant. The answer has no `owId`; a missing refresh token in it means the
    /// old one stays in use.
    async fn refresh(&self, refresh_token: &Secret) -> Result<TokenSet, AuthError> {
        let endpoint = AuthEndpoint::Refresh;
        let request = self.basic(self.http.post(self.token_url.clone())).form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
        ]);
        let (status, body) = self.send(endpoint, request).await?;
        parse_token_answer(endpoint, status, &body)
    }

    /// Invalidates `access_token` at IQM. A 401 means it was not valid any more, which is what
    /// logging out wants, so it counts as success.
    async fn logout(&self, access_token: &Secret) -> Result<(), AuthError> {
        let endpoint = AuthEndpoint::Logout;
        let request = self
            .http
            .post(self.logout_url.clone())
            .bearer_auth(access_token.expose());
        match self.send(endpoint, request).await {
            Ok((status, body)) => match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(root)) if root.get("success") == Some(&Value::Bool(false)) => {
                    Err(rejection_from(endpoint, status, &root))
                }
                _ => Ok(()),
            },
            Err(err) if err.status() == Some(StatusCode::UNAUTHORIZED) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Creates an account for an invited user and returns its token set (without `owId`).
    async fn sign_up(&self, email: &str, password: &Secret) -> Result<TokenSet, AuthError> {
        let endpoint = AuthEndpoint::SignUp;
        let request = self
            .basic(self.http.post(self.sign_up_url.clone()))
            .json(&SignUpBody {
                email,
                password: password.expose(),
            });
        let (status, body) = self.send(endpoint, request).await?;
        parse_token_answer(endpoint, status, &body)
    }
}

impl std::fmt::Debug for IqmApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IqmApi")
            .field("login_url", &self.login_url.as_str())
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("workspace_host", &self.workspace_host)
            .finish_non_exhaustive()
    }
}

async fn read_capped(
    endpoint: AuthEndpoint,
    status: StatusCode,
    response: &mut reqwest::Response,
) -> Result<Vec<u8>, AuthError> {
    let too_large = || {
        AuthError::invalid(
            endpoint,
            status,
            &format!("the body is larger than {MAX_AUTH_BODY_BYTES} bytes"),
        )
    };
    if response
        .content_length()
        .is_some_and(|len| len > MAX_AUTH_BODY_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| AuthError::transport(endpoint, e))?
    {
        if body.len() + chunk.len() > MAX_AUTH_BODY_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads a token answer. Accepts IQM's envelope (`{"success": true, "data": {…}}`) and a bare
/// OAuth answer alike, since the docs show both; `"success": false` is a rejection whatever
/// the status. Never panics, whatever the bytes.
pub(crate) fn parse_token_answer(
    endpoint: AuthEndpoint,
    status: StatusCode,
    body: &[u8],
) -> Result<TokenSet, AuthError> {
    let invalid = |problem: &str| AuthError::invalid(endpoint, status, problem);
    let root = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(root)) => root,
        Ok(_) => return Err(invalid("the body is JSON but not an object")),
        Err(e) if e.is_eof() => return Err(invalid("the JSON body is truncated")),
        Err(_) => return Err(invalid("the body is not JSON")),
    };
    if root.get("success") == Some(&Value::Bool(false)) {
        return Err(rejection_from(endpoint, status, &root));
    }
    let data = match root.get("data") {
        Some(Value::Object(data)) if data.contains_key("access_token") => data,
        _ => &root,
    };
    let access_token = match data.get("access_token") {
        Some(Value::String(token)) => token,
        Some(_) => return Err(invalid("access_token is not a string")),
        None => return Err(invalid("the answer has no access_token")),
    };
    check_token_bytes(access_token).map_err(|p| invalid(&format!("access_token {p}")))?;
    let refresh_token = match data.get("refresh_token") {
        None | Some(Value::Null) => None,
        Some(Value::String(token)) => {
            check_token_bytes(token).map_err(|p| invalid(&format!("refresh_token {p}")))?;
            Some(Secret::new(token.as_str()))
        }
        Some(_) => return Err(invalid("refresh_token is not a string")),
    };
    let ow_id = match data.get("owId") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .ok_or_else(|| invalid("owId is not a workspace id"))?,
        ),
        Some(Value::String(s)) => Some(
            s.trim()
                .parse()
                .map_err(|_| invalid("owId is not a workspace id"))?,
        ),
        Some(_) => return Err(invalid("owId is not a workspace id")),
    };
    Ok(TokenSet {
        access_token: Secret::new(access_token.as_str()),
        refresh_token,
        expires_in: lifetime_from_expires_in(data.get("expires_in")),
        scope: data.get("scope").and_then(Value::as_str).map(str::to_owned),
        token_type: data
            .get("token_type")
            .and_then(Value::as_str)
            .map(str::to_owned),
        ow_id,
    })
}

/// The error for a non-2xx answer, with IQM's messages when the body has any.
fn rejection(
    endpoint: AuthEndpoint,
    status: StatusCode,
    body: &[u8],
    retry_after: Option<Duration>,
) -> AuthError {
    let messages = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(root)) => messages_from(&root),
        _ => Vec::new(),
    };
    AuthError::Rejected {
        endpoint,
        status,
        messages,
        retry_after,
    }
}

fn rejection_from(
    endpoint: AuthEndpoint,
    status: StatusCode,
    root: &Map<String, Value>,
) -> AuthError {
    AuthError::Rejected {
        endpoint,
        status,
        messages: messages_from(root),
        retry_after: None,
    }
}

/// `Retry-After` as delay-seconds or an HTTP date; a date in the past is no wait.
pub(crate) fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(
        date.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// IQM's `errorObjects`, or else a plain OAuth error (`error`, `error_description`).
fn messages_from(root: &Map<String, Value>) -> Vec<IqmMessage> {
    let text = |v: Option<&Value>| match v {
        Some(Value::String(s)) => Some(s.clone()),
        None | Some(Value::Null) => None,
        Some(other) => Some(other.to_string()),
    };
    if let Some(Value::Array(objects)) = root.get("errorObjects") {
        return objects
            .iter()
            .filter_map(Value::as_object)
            .filter_map(|o| {
                Some(IqmMessage {
                    error: text(o.get("error"))?,
                    reason: text(o.get("reason")),
                    field: text(o.get("field")),
                })
            })
            .collect();
    }
    match text(root.get("error")) {
        Some(error) => vec![IqmMessage {
            error,
            reason: text(root.get("error_description")),
            field: None,
        }],
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<TokenSet, AuthError> {
        parse_token_answer(AuthEndpoint::Login, StatusCode::OK, body.as_bytes())
    }

    #[test]
    fn reads_iqms_login_envelope() {
        let set = parse(
            r#"{"success":true,"data":{"access_token":"106adb25","refresh_token":"eac4c1f6",
            "scope":"read write","token_type":"bearer","expires_in":35999,"owId":200001}}"#,
        )
        .unwrap();
        assert_eq!(set.access_token.expose(), "106adb25");
        assert_eq!(set.refresh_token.unwrap().expose(), "eac4c1f6");
        assert_eq!(set.expires_in, Duration::from_secs(35999));
        assert_eq!(set.ow_id, Some(200001));
        assert_eq!(set.scope.as_deref(), Some("read write"));
    }

    #[test]
    fn reads_a_bare_oauth_refresh_answer() {
        let set = parse(r#"{"access_token":"a","refresh_token":"r","expires_in":10}"#).unwrap();
        assert_eq!(set.access_token.expose(), "a");
        assert_eq!(set.ow_id, None);
    }

    #[test]
    fn an_error_envelope_with_status_200_is_a_rejection_with_iqms_message() {
        let err = parse(r#"{"success":false,"errorObjects":[{"error":"Nope","reason":"why"}]}"#)
            .unwrap_err();
        assert!(matches!(err, AuthError::Rejected { .. }));
        assert_eq!(err.iqm_messages()[0].error, "Nope");
        assert_eq!(err.iqm_messages()[0].reason.as_deref(), Some("why"));
    }

    #[test]
    fn garbage_is_an_invalid_response_that_names_the_problem() {
        let cases = [
            (r#"{"success":true,"data":{"access_tok"#, "truncated"),
            ("<html><body>502 Bad Gateway</body></html>", "not JSON"),
            ("[1,2]", "not an object"),
            (
                r#"{"success":true,"data":{"refresh_token":"r"}}"#,
                "no access_token",
            ),
            (r#"{"access_token":""}"#, "access_token is empty"),
            (
                r#"{"access_token":"a\r\nSet-Cookie: x"}"#,
                "access_token contains",
            ),
            (r#"{"access_token":7}"#, "access_token is not a string"),
            (
                r#"{"access_token":"a","refresh_token":"b c"}"#,
                "refresh_token contains",
            ),
            (r#"{"access_token":"a","owId":-1}"#, "owId"),
        ];
        for (body, expected) in cases {
            match parse(body) {
                Err(AuthError::InvalidResponse { problem, .. }) => {
                    assert!(problem.contains(expected), "{body}: {problem}")
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_invalid_token_is_never_echoed_in_the_error() {
        let err = parse(r#"{"access_token":"topsecret\n"}"#).unwrap_err();
        assert!(!format!("{err} {err:?}").contains("topsecret"));
    }

    #[test]
    fn rejections_carry_oauth_errors_too() {
        let err = rejection(
            AuthEndpoint::Refresh,
            StatusCode::BAD_REQUEST,
            br#"{"error":"invalid_grant","error_description":"Invalid refresh token"}"#,
            None,
        );
        assert_eq!(
            err.to_string(),
            "IQM rejected the token refresh call (400 Bad Request): invalid_grant (Invalid refresh token)"
        );
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn a_rejection_with_an_html_body_keeps_its_status() {
        let err = rejection(
            AuthEndpoint::Login,
            StatusCode::BAD_GATEWAY,
            b"<html>",
            None,
        );
        assert_eq!(err.status(), Some(StatusCode::BAD_GATEWAY));
        assert!(err.iqm_messages().is_empty());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            any::<f64>().prop_map(|n| serde_json::json!(n)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            let keys = prop_oneof![
                Just("success".to_owned()),
                Just("data".to_owned()),
                Just("access_token".to_owned()),
                Just("refresh_token".to_owned()),
                Just("expires_in".to_owned()),
                Just("owId".to_owned()),
                Just("errorObjects".to_owned()),
                Just("error".to_owned()),
                ".{0,6}",
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(keys, inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256), code in 100u16..600) {
            let status = StatusCode::from_u16(code).unwrap();
            let _ = parse_token_answer(AuthEndpoint::Login, status, &body);
            let _ = rejection(AuthEndpoint::Refresh, status, &body, None);
        }

        #[test]
        fn arbitrary_json_never_panics_and_accepted_tokens_are_sendable(value in json()) {
            let body = serde_json::to_vec(&value).unwrap();
            if let Ok(set) = parse_token_answer(AuthEndpoint::Login, StatusCode::OK, &body) {
                prop_assert!(check_token_bytes(set.access_token.expose()).is_ok());
                prop_assert!(set.expires_in <= crate::token::MAX_TOKEN_LIFETIME);
            }
        }
    }
}
