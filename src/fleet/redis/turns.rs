//! The fleet's line of turns in Redis, as the session's calls read and write it.

use std::time::Duration;

use redis::Script;

use super::RedisSession;
use crate::fleet::{CoordinatorError, Pace, Turn};

/// Takes or confirms a turn in the fleet's line with `script` (see `scripts.rs`).
pub(super) async fn turn(
    session: &RedisSession,
    script: &Script,
    scope: &str,
    call: &str,
    pace: &Pace,
) -> Result<Turn, CoordinatorError> {
    let answer: String = session
        .run(
            script,
            scope,
            &["turns", "window"],
            &[
                member(call, pace).as_bytes(),
                micros(pace.interval).as_bytes(),
                micros(pace.max_wait).as_bytes(),
                if pace.auth { b"1" } else { b"0" },
            ],
        )
        .await?;
    let (refused, wait) = match answer.strip_prefix('r') {
        Some(wait) => (true, wait),
        None => (false, answer.as_str()),
    };
    let wait = Duration::from_micros(wait.parse().unwrap_or(0));
    Ok(match (refused, wait.is_zero()) {
        (true, _) => Turn::Refused(wait),
        (false, true) => Turn::Now,
        (false, false) => Turn::In(wait),
    })
}

/// A call's name in the fleet's line: an auth call's starts with `a|`, which the scripts read.
pub(super) fn member(call: &str, pace: &Pace) -> String {
    format!("{}|{call}", if pace.auth { "a" } else { "r" })
}

/// A duration in microseconds, rounded up (an interval is never shortened), cut at a year.
fn micros(duration: Duration) -> String {
    const YEAR_US: u128 = 365 * 24 * 3600 * 1_000_000;
    duration.as_nanos().div_ceil(1000).min(YEAR_US).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interval_is_sent_in_microseconds_rounded_up() {
        assert_eq!(micros(Duration::from_millis(3000)), "3000000");
        assert_eq!(micros(Duration::from_nanos(1)), "1");
        assert_eq!(micros(Duration::from_secs(60) / 19), "3157895");
        assert_eq!(
            micros(Duration::MAX),
            (365u128 * 24 * 3600 * 1_000_000).to_string()
        );
    }
}
