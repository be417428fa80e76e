//! The token model: what IQM hands out, and the pure arithmetic of when to renew it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::HeaderValue;
use serde_json::Value;

use crate::secret::Secret;

/// The longest lifetime believed from IQM's `expires_in`; larger values (10^12 seconds, numbers
/// beyond `u64`) are cut to this, so deadline arithmetic can never overflow.
pub(crate) const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The lifetime assumed when IQM's answer carries no usable `expires_in` (missing, `null`, or a
/// string that is not a number). A 401 renews such a token sooner if IQM revokes it.
pub(crate) const ASSUMED_TOKEN_LIFETIME: Duration = Duration::from_secs(60 * 60);

/// The renewal margin never exceeds this fraction (1/N) of a token's lifetime, so a short-lived
/// token is still reused for most of its life instead of being renewed on every request.
const MAX_MARGIN_FRACTION: u32 = 4;

/// A token set as IQM returned it from login, refresh or sign-up.
///
/// Every secret in it is a [`Secret`], so printing the set reveals nothing.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TokenSet {
    /// The bearer token sent as `Authorization: Bearer …`.
    pub access_token: Secret,
    /// The refresh token, when IQM issued one.
    pub refresh_token: Option<Secret>,
    /// How long the access token lives, from IQM's `expires_in`: cut at one year, zero for a
    /// zero or negative value, and one hour when the answer has no usable number.
    pub expires_in: Duration,
    /// The OAuth scope, e.g. `read write`.
    pub scope: Option<String>,
    /// The token type, `bearer` for IQM.
    pub token_type: Option<String>,
    /// The Organization Workspace ID (`owId`). Login answers carry it; refresh and sign-up
    /// answers do not.
    pub ow_id: Option<u64>,
}

impl TokenSet {
    /// A set of just an access token and its lifetime, for an [`AuthApi`](crate::AuthApi) of
    /// your own; set the other fields as the answer has them.
    pub fn new(access_token: impl Into<String>, expires_in: Duration) -> Self {
        Self {
            access_token: Secret::new(access_token),
            refresh_token: None,
            expires_in,
            scope: None,
            token_type: None,
            ow_id: None,
        }
    }
}

/// Reads IQM's `expires_in` with a defined outcome for every shape it can take:
/// a non-negative number (integer or float) is that many seconds, cut at
/// [`MAX_TOKEN_LIFETIME`]; zero, negative numbers and NaN are an already expired token (used once
/// by the request that fetched it); a numeric string is read as its number; anything else
/// (missing, `null`, other strings, objects) is [`ASSUMED_TOKEN_LIFETIME`].
pub(crate) fn lifetime_from_expires_in(value: Option<&Value>) -> Duration {
    let seconds = match value {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match seconds {
        None => ASSUMED_TOKEN_LIFETIME,
        Some(s) if s.is_nan() || s <= 0.0 => Duration::ZERO,
        Some(s) if s >= MAX_TOKEN_LIFETIME.as_secs_f64() => MAX_TOKEN_LIFETIME,
        Some(s) => Duration::from_secs_f64(s),
    }
}

/// When a token issued at `issued` should be renewed, and when it stops being valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadlines {
    /// When the request that obtained the token was sent.
    pub(crate) issued: Instant,
    /// From here on a renewal is started (in the background while the token is still valid).
    pub(crate) renew_at: Instant,
    /// From here on the token is not used any more: requests wait for a new one.
    pub(crate) expires_at: Instant,
}

impl Deadlines {
    /// Pure: the margin is clamped to a quarter of the lifetime, the lifetime to
    /// [`MAX_TOKEN_LIFETIME`], and `issued` should be taken before the request that obtained the
    /// token was sent, so the deadlines err on the early side.
    pub(crate) fn compute(issued: Instant, lifetime: Duration, margin: Duration) -> Self {
        let lifetime = lifetime.min(MAX_TOKEN_LIFETIME);
        let margin = margin.min(lifetime / MAX_MARGIN_FRACTION);
        let expires_at = issued
            .checked_add(lifetime)
            .unwrap_or_else(|| far_future(issued));
        Self {
            issued,
            renew_at: expires_at - margin,
            expires_at,
        }
    }

    /// The same deadlines with the renewal margin scaled by a factor in [0.5, 1] picked by
    /// `unit` in [0, 1): replicas sharing one session then reach their renewal points at
    /// different moments instead of all in the same millisecond.
    pub(crate) fn with_jittered_margin(self, unit: f64) -> Self {
        let margin = self.expires_at - self.renew_at;
        Self {
            renew_at: self.expires_at - margin.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0)),
            ..self
        }
    }

    pub(crate) fn freshness(&self, now: Instant) -> Freshness {
        if now < self.renew_at {
            Freshness::Fresh
        } else if now < self.expires_at {
            Freshness::RenewSoon
        } else {
            Freshness::Expired
        }
    }
}

/// An instant far enough ahead to never be reached, for a platform whose `Instant` cannot hold
/// `issued + MAX_TOKEN_LIFETIME`.
pub(crate) fn far_future(issued: Instant) -> Instant {
    let mut step = MAX_TOKEN_LIFETIME;
    loop {
        step /= 2;
        if let Some(later) = issued.checked_add(step) {
            return later;
        }
    }
}

/// How a cached token stands at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Use it.
    Fresh,
    /// Use it, and start a renewal.
    RenewSoon,
    /// Do not use it: wait for a renewal.
    Expired,
}

/// A token set as cached: header values built once, deadlines computed once, and a generation
/// number that tells one cached token from the next.
pub(crate) struct CachedToken {
    pub(crate) generation: u64,
    pub(crate) bearer: HeaderValue,
    pub(crate) ow_id_header: HeaderValue,
    pub(crate) ow_id: u64,
    pub(crate) access_token: Secret,
    pub(crate) refresh_token: Option<Secret>,
    pub(crate) deadlines: Deadlines,
    /// Set by the first request that uses this token; a background renewal only renews tokens
    /// that were used, so an idle service makes no auth calls.
    used: AtomicBool,
    /// Set by the first request that finds this token due for renewal, so that only that one
    /// request starts the early renewal.
    renewal_claimed: AtomicBool,
    /// While set, the token is known to be before its renewal deadline without reading the
    /// clock: the background renewer clears it when the deadline passes. Never set for a
    /// session that reads the clock on every request (a custom clock, or no background renewer).
    known_fresh: AtomicBool,
    /// Set when IQM answered 401 to this token and a renewal started for it: requests wait for
    /// that renewal instead of sending the token again. Cleared if the renewal fails.
    refused: AtomicBool,
    /// The generation of the fleet's shared session this token came from or was published as
    /// (0: this replica's own; [`SHARED_UNKNOWN`]: shared, or possibly shared, under a
    /// generation this replica does not know).
    shared_generation: AtomicU64,
}

/// The shared generation of a token that was, or may have been, shared with the fleet under a
/// generation this replica does not know: a publication whose answer was lost, or a set resumed
/// from the token store. Such a token's refresh token is never presented by this replica alone.
pub(crate) const SHARED_UNKNOWN: u64 = u64::MAX;

impl CachedToken {
    pub(crate) fn new(
        generation: u64,
        access_token: Secret,
        refresh_token: Option<Secret>,
        ow_id: u64,
        deadlines: Deadlines,
        known_fresh: bool,
    ) -> Result<Self, &'static str> {
        let bearer = sensitive_header(format!("Bearer {}", access_token.expose()))?;
        let ow_id_header = ow_id_header(ow_id);
        Ok(Self {
            generation,
            bearer,
            ow_id_header,
            ow_id,
            access_token,
            refresh_token,
            deadlines,
            used: AtomicBool::new(false),
            renewal_claimed: AtomicBool::new(false),
            known_fresh: AtomicBool::new(known_fresh),
            refused: AtomicBool::new(false),
            shared_generation: AtomicU64::new(0),
        })
    }

    pub(crate) fn mark_used(&self) {
        // A load first, so that the hot path only ever reads this cache line once it is set.
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the token is known to be fresh without a look at the clock.
    pub(crate) fn known_fresh(&self) -> bool {
        self.known_fresh.load(Ordering::Relaxed)
    }

    /// From now on, callers read the clock to tell how fresh this token is.
    pub(crate) fn forget_known_fresh(&self) {
        self.known_fresh.store(false, Ordering::Relaxed);
    }

    /// IQM answered 401 to this token: from now on the hot path does not hand it out.
    pub(crate) fn mark_refused(&self) {
        self.forget_known_fresh();
        self.refused.store(true, Ordering::Relaxed);
    }

    /// The renewal for a refused token failed: use it again (the 401 may not have been its
    /// fault, and callers get IQM's own answer rather than the renewal's error).
    pub(crate) fn clear_refused(&self) {
        self.refused.store(false, Ordering::Relaxed);
    }

    /// Whether IQM answered 401 to this token and its renewal has not failed.
    pub(crate) fn was_refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }

    /// True for the first caller only.
    pub(crate) fn claim_early_renewal(&self) -> bool {
        !self.renewal_claimed.load(Ordering::Relaxed)
            && !self.renewal_claimed.swap(true, Ordering::Relaxed)
    }

    pub(crate) fn was_used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }

    pub(crate) fn shared_generation(&self) -> u64 {
        self.shared_generation.load(Ordering::Relaxed)
    }

    pub(crate) fn set_shared_generation(&self, generation: u64) {
        self.shared_generation.store(generation, Ordering::Relaxed);
    }
}

/// How many distinct workspace ids get an interned header value.
const MAX_INTERNED_OW_IDS: usize = 16;

/// The `X-IAA-OW-ID` header value, marked sensitive. The first few distinct workspace ids of the
/// process are interned (a process almost always has one, and they are not secret), so that
/// their header value is static and cloning it into each request touches no reference count.
fn ow_id_header(ow_id: u64) -> HeaderValue {
    static INTERNED: parking_lot::Mutex<Vec<(u64, &'static str)>> =
        parking_lot::Mutex::new(Vec::new());
    let text = {
        let mut interned = INTERNED.lock();
        match interned.iter().find(|(id, _)| *id == ow_id) {
            Some((_, text)) => Some(*text),
            None if interned.len() < MAX_INTERNED_OW_IDS => {
                let text: &'static str = Box::leak(ow_id.to_string().into_boxed_str());
                interned.push((ow_id, text));
                Some(text)
            }
            None => None,
        }
    };
    let mut header = match text {
        // Digits only: always a valid header value.
        Some(text) => HeaderValue::from_static(text),
        None => HeaderValue::from(ow_id),
    };
    header.set_sensitive(true);
    header
}

fn sensitive_header(value: String) -> Result<HeaderValue, &'static str> {
    // `from_maybe_shared` keeps the bytes behind a reference count, so cloning the value into
    // each request is a counter increment, not a copy.
    let mut header = HeaderValue::from_maybe_shared(bytes::Bytes::from(value))
        .map_err(|_| "the value is not allowed in an HTTP header")?;
    header.set_sensitive(true);
    Ok(header)
}

/// Checks that a token can be sent as a header as is: not empty, visible ASCII only (no space,
/// CR, LF, NUL, DEL or other control bytes), so no header can be injected or sent blank.
pub(crate) fn check_token_bytes(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        return Err("is empty");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("contains bytes not allowed in an HTTP header");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_long_token_is_renewed_one_margin_before_it_expires() {
        let t0 = Instant::now();
        let d = Deadlines::compute(t0, Duration::from_secs(35999), MINUTE);
        assert_eq!(d.expires_at - t0, Duration::from_secs(35999));
        assert_eq!(d.expires_at - d.renew_at, MINUTE);
    }

    #[test]
    fn the_margin_is_clamped_to_a_quarter_of_a_short_lifetime() {
        let t0 = Instant::now();
        let d = Deadlines::compute(t0, Duration::from_secs(3), MINUTE);
        assert_eq!(d.renew_at - t0, Duration::from_millis(2250));
        assert_eq!(d.freshness(t0), Freshness::Fresh);
        assert_eq!(
            d.freshness(t0 + Duration::from_millis(2249)),
            Freshness::Fresh
        );
        assert_eq!(
            d.freshness(t0 + Duration::from_millis(2250)),
            Freshness::RenewSoon
        );
        assert_eq!(
            d.freshness(t0 + Duration::from_millis(2999)),
            Freshness::RenewSoon
        );
        assert_eq!(d.freshness(t0 + Duration::from_secs(3)), Freshness::Expired);
    }

    #[test]
    fn a_jittered_margin_keeps_between_half_and_all_of_the_margin() {
        let t0 = Instant::now();
        let d = Deadlines::compute(t0, Duration::from_secs(100), Duration::from_secs(20));
        assert_eq!(
            d.with_jittered_margin(0.0).renew_at - t0,
            Duration::from_secs(90)
        );
        assert_eq!(
            d.with_jittered_margin(0.5).renew_at - t0,
            Duration::from_secs(85)
        );
        assert_eq!(
            d.with_jittered_margin(1.0).renew_at - t0,
            Duration::from_secs(80)
        );
        assert_eq!(d.with_jittered_margin(0.7).expires_at, d.expires_at);
    }

    #[test]
    fn a_zero_lifetime_token_is_expired_at_once() {
        let t0 = Instant::now();
        let d = Deadlines::compute(t0, Duration::ZERO, MINUTE);
        assert_eq!(d.freshness(t0), Freshness::Expired);
    }

    #[test]
    fn a_huge_lifetime_does_not_overflow() {
        let t0 = Instant::now();
        let d = Deadlines::compute(t0, Duration::MAX, Duration::MAX);
        assert_eq!(d.expires_at - t0, MAX_TOKEN_LIFETIME);
        assert_eq!(d.freshness(t0), Freshness::Fresh);
    }

    #[test]
    fn expires_in_has_a_defined_outcome_for_every_shape() {
        let cases = [
            (Some(json!(35999)), Duration::from_secs(35999)),
            (Some(json!(1.5)), Duration::from_millis(1500)),
            (Some(json!("120")), Duration::from_secs(120)),
            (Some(json!(0)), Duration::ZERO),
            (Some(json!(-5)), Duration::ZERO),
            (Some(json!(1_000_000_000_000u64)), MAX_TOKEN_LIFETIME),
            (Some(json!(1e30)), MAX_TOKEN_LIFETIME),
            (Some(json!(u64::MAX)), MAX_TOKEN_LIFETIME),
            (Some(json!("soon")), ASSUMED_TOKEN_LIFETIME),
            (Some(json!(null)), ASSUMED_TOKEN_LIFETIME),
            (Some(json!({"s": 1})), ASSUMED_TOKEN_LIFETIME),
            (None, ASSUMED_TOKEN_LIFETIME),
        ];
        for (value, expected) in cases {
            assert_eq!(
                lifetime_from_expires_in(value.as_ref()),
                expected,
                "{value:?}"
            );
        }
    }

    #[test]
    fn tokens_that_cannot_be_sent_as_a_header_are_refused() {
        assert!(check_token_bytes("106adb25-abc").is_ok());
        for bad in ["", "a b", "a\r\nX-Evil: 1", "a\0", "a\x7f", "é"] {
            assert!(check_token_bytes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn header_values_are_marked_sensitive() {
        let d = Deadlines::compute(Instant::now(), MINUTE, Duration::ZERO);
        let token = CachedToken::new(1, Secret::new("tok"), None, 7, d, false).unwrap();
        assert!(token.bearer.is_sensitive());
        assert!(token.ow_id_header.is_sensitive());
        assert_eq!(token.bearer, "Bearer tok");
        assert_eq!(token.ow_id_header, "7");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            (0u64..100_000, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
            any::<u64>().prop_map(Duration::from_secs),
            Just(Duration::MAX),
        ]
    }

    proptest! {
        #[test]
        fn deadlines_are_ordered_bounded_and_never_panic(lifetime in duration(), margin in duration()) {
            let issued = Instant::now();
            let d = Deadlines::compute(issued, lifetime, margin);
            prop_assert!(issued <= d.renew_at && d.renew_at <= d.expires_at);
            prop_assert!(d.expires_at - issued <= MAX_TOKEN_LIFETIME);
            let life = lifetime.min(MAX_TOKEN_LIFETIME);
            prop_assert_eq!(d.expires_at - issued, life);
            // The margin never eats more than a quarter of the life.
            prop_assert!(d.renew_at - issued >= life - life / 4);
            prop_assert_eq!(d.freshness(issued) == Freshness::Fresh, d.renew_at > issued);
        }

        #[test]
        fn any_expires_in_number_gives_a_bounded_lifetime(seconds in any::<f64>()) {
            let lifetime = lifetime_from_expires_in(Some(&serde_json::json!(seconds)));
            prop_assert!(lifetime <= MAX_TOKEN_LIFETIME);
            let as_string = lifetime_from_expires_in(Some(&Value::String(seconds.to_string())));
            prop_assert!(as_string <= MAX_TOKEN_LIFETIME);
        }

        #[test]
        fn any_string_checks_without_panic(token in ".*") {
            let ok = check_token_bytes(&token).is_ok();
            prop_assert_eq!(ok, !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()));
        }
    }
}
