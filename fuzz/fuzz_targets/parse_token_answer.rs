//! Feeds arbitrary bytes to the parser of IQM's auth answers: it must never panic, and a token
//! it accepts must be sendable as a header.
#![no_main]

use iqm_auth::reqwest_middleware::reqwest::StatusCode;
use iqm_auth::AuthEndpoint;
use iqm_auth::fuzzing::parse_token_answer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&status, body)) = data.split_first() else {
        return;
    };
    let status = StatusCode::from_u16(100 + u16::from(status) * 2).unwrap_or(StatusCode::OK);
    for endpoint in [AuthEndpoint::Login, AuthEndpoint::Refresh] {
        if let Ok(set) = parse_token_answer(endpoint, status, body) {
            let token = set.access_token.expose();
            assert!(!token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()));
        }
    }
});
