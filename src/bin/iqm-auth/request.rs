//! `get` and `post`: one request to IQM's API through the layer, 401 replay included.

use std::io::{Read, Write};

use iqm_auth::IqmAuth;
use iqm_auth::reqwest_middleware::ClientBuilder;
use reqwest::{Method, Url};

use crate::Done;
use crate::failure::Failure;
use crate::shared::check_shared_session;

pub(crate) async fn send(
    auth: &IqmAuth,
    method: Method,
    path: &str,
    data: Option<&str>,
) -> Result<Done, Failure> {
    let base = auth.base_url();
    let url = api_url(base, path)?;
    let body = data.map(json_body).transpose()?;
    check_shared_session(auth).await?;
    let http = reqwest::Client::builder()
        .redirect(auth.redirect_policy())
        .build()
        .map_err(|err| Failure::Config(format!("could not build the HTTP client: {err}")))?;
    let client = ClientBuilder::new(http).with(auth.clone()).build();
    let mut request = client.request(method.clone(), url.clone());
    if let Some(body) = body {
        request = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
    }
    let response = request
        .send()
        .await
        .map_err(|err| Failure::from_request(&err, base))?;
    let status = response.status();
    let answer = response
        .bytes()
        .await
        .map_err(|err| Failure::from_request(&err.into(), base))?;
    print_answer(&answer)?;
    if status.is_client_error() || status.is_server_error() {
        return Err(Failure::http(status, method.as_str(), &url));
    }
    Ok(Done::Exit)
}

/// `path` below the base URL. Only IQM's origin: the layer authenticates nothing else, and a
/// request elsewhere is not what `get` is for.
fn api_url(base: &Url, path: &str) -> Result<Url, Failure> {
    let url = base
        .join(path.trim_start_matches('/'))
        .map_err(|err| Failure::Usage(format!("{path:?} is not a path: {err}")))?;
    if url.origin() != base.origin() {
        return Err(Failure::Usage(format!(
            "{path:?} leads away from IQM's API ({base}); give a path such as /api/v3/ua/profile"
        )));
    }
    Ok(url)
}

/// `--data`: the JSON itself, `@FILE`, or `-` for standard input; checked to be JSON, and
/// never shown (it may hold anything).
fn json_body(data: &str) -> Result<Vec<u8>, Failure> {
    let body = if data == "-" {
        let mut body = Vec::new();
        std::io::stdin().read_to_end(&mut body).map_err(|err| {
            Failure::Usage(format!("--data -: could not read standard input: {err}"))
        })?;
        body
    } else if let Some(file) = data.strip_prefix('@') {
        std::fs::read(file)
            .map_err(|err| Failure::Usage(format!("--data @{file}: could not read it: {err}")))?
    } else {
        data.as_bytes().to_vec()
    };
    // serde_json's message names a line and column, never the content.
    serde_json::from_slice::<serde::de::IgnoredAny>(&body)
        .map_err(|err| Failure::Usage(format!("--data is not JSON: {err}")))?;
    Ok(body)
}

/// The answer's body on standard output: pretty when it is JSON (in IQM's key order), else as
/// it came.
fn print_answer(answer: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match serde_json::from_slice::<serde_json::Value>(answer) {
        Ok(json) => {
            let pretty = serde_json::to_string_pretty(&json)
                .map_err(|err| Failure::Output(std::io::Error::other(err)))?;
            writeln!(out, "{pretty}")?;
        }
        Err(_) => out.write_all(answer)?,
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_on_iqms_origin_below_the_base_url() {
        let base = Url::parse("https://api.iqm.com/iqm/").unwrap();
        let url = |path: &str| api_url(&base, path).map(|url| url.to_string());
        assert_eq!(
            url("/api/v3/ua/profile?x=1").unwrap(),
            "https://api.iqm.com/iqm/api/v3/ua/profile?x=1"
        );
        assert_eq!(url("api/v3/x").unwrap(), "https://api.iqm.com/iqm/api/v3/x");
        assert!(url("https://evil.example/x").is_err());
        assert!(url("http://api.iqm.com/x").is_err());
        assert_eq!(
            url("//evil.example/x").unwrap(),
            "https://api.iqm.com/iqm/evil.example/x"
        );
    }

    #[test]
    fn data_must_be_json_and_is_never_echoed() {
        assert_eq!(json_body(r#"{"a": 1}"#).unwrap(), br#"{"a": 1}"#);
        let Err(Failure::Usage(message)) = json_body("hunter2") else {
            panic!("not JSON");
        };
        assert!(!message.contains("hunter2"), "{message}");
    }
}
