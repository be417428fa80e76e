//! The builder's validation.

use super::*;

fn complete() -> IqmAuthBuilder {
    IqmAuth::builder()
        .client_credentials("id", "secret")
        .workspace_host("acme.iqm.com")
        .credentials("a@b.c", "pw")
}

#[test]
fn a_complete_builder_builds_with_the_default_base_url() {
    assert!(complete().build().is_ok());
}

#[test]
fn each_missing_or_blank_field_is_named() {
    let cases = [
        (complete().client_credentials("", "s"), "client id"),
        (complete().client_credentials("i", " "), "client secret"),
        (complete().workspace_host(""), "workspace host"),
        (complete().credentials("", "pw"), "email"),
        (complete().credentials("a@b.c", ""), "password"),
    ];
    for (builder, field) in cases {
        assert_eq!(builder.build().unwrap_err(), ConfigError::Missing(field));
    }
}

#[test]
fn bad_base_urls_are_refused_with_the_reason() {
    for (url, reason) in [
        ("not a url", "relative URL"),
        ("ftp://api.iqm.com", "scheme"),
        ("https://user:pw@api.iqm.com", "credentials"),
        ("https://api.iqm.com/?x=1", "query"),
    ] {
        match complete().base_url(url).build() {
            Err(ConfigError::InvalidBaseUrl { problem, .. }) => {
                assert!(problem.contains(reason), "{url}: {problem}")
            }
            other => panic!("{url}: {other:?}"),
        }
    }
}

#[test]
fn a_password_in_the_base_url_is_neither_accepted_nor_echoed() {
    for url in [
        "https://user:hunter2@api.iqm.com",
        "https://hunter2@api.iqm.com/path",
        "https://user:hunter2@api.iqm.com:notaport",
        "user:hunter2@api.iqm.com",
    ] {
        let builder = complete().base_url(url);
        let debug = format!("{builder:?}");
        let err = builder.build().unwrap_err();
        let shown = format!("{debug} {err} {err:?}");
        assert!(!shown.contains("hunter2"), "{url}: {shown}");
    }
    assert_eq!(
        without_user_info("https://user:pw@api.iqm.com/x?a=b@c"),
        "https://[redacted]@api.iqm.com/x?a=b@c"
    );
    assert_eq!(
        without_user_info("https://api.iqm.com/"),
        "https://api.iqm.com/"
    );
}

#[test]
fn a_base_path_gets_a_trailing_slash_so_endpoints_join_below_it() {
    assert_eq!(
        parse_base_url("http://127.0.0.1:8080/iqm")
            .unwrap()
            .as_str(),
        "http://127.0.0.1:8080/iqm/"
    );
}

#[test]
fn from_env_names_every_missing_variable() {
    let err =
        IqmAuthBuilder::from_lookup(|name| (name == "IQM_CLIENT_ID").then(|| "id".to_owned()))
            .unwrap_err();
    assert_eq!(
        err,
        ConfigError::MissingEnv(vec![
            "IQM_CLIENT_SECRET",
            "IQM_WORKSPACE_HOST",
            "IQM_EMAIL",
            "IQM_PASSWORD"
        ])
    );
    assert_eq!(
        err.to_string(),
        "missing environment variables: IQM_CLIENT_SECRET, IQM_WORKSPACE_HOST, IQM_EMAIL, \
         IQM_PASSWORD"
    );
}

#[test]
fn from_env_reads_every_variable() {
    let builder = IqmAuthBuilder::from_lookup(|name| Some(format!("{name}-value")))
        .map(|b| b.base_url("http://127.0.0.1:1"));
    let debug = format!("{:?}", builder.unwrap());
    assert!(debug.contains("IQM_CLIENT_ID-value"));
    assert!(!debug.contains("IQM_PASSWORD-value"), "{debug}");
    assert!(!debug.contains("IQM_CLIENT_SECRET-value"), "{debug}");
}

#[test]
fn the_builders_debug_redacts_secrets() {
    let debug = format!(
        "{:?}",
        complete()
            .client_credentials("id", "the-secret")
            .credentials("e", "the-password")
    );
    assert!(
        !debug.contains("the-secret") && !debug.contains("the-password"),
        "{debug}"
    );
}
