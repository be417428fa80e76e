//! 401s that are not the token's fault. An endpoint the user may not access answers 401 whatever
//! the token; renewing for each such 401 would spend IQM's rate limit one call per request. The
//! proof that an endpoint refuses the user is that it answered 401 to a token and then to one
//! this layer obtained from IQM after that 401 (typically the replay's); a revocation makes the
//! next token work. A set taken from the store or the fleet's shared session proves nothing: it
//! may have been issued before the revocation. An endpoint is the path of the answer's final URL.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reqwest::Url;

use super::Session;

/// How many endpoints are remembered at most; past it, a 401 is treated as the token's fault.
const MAX_ENDPOINTS: usize = 256;

/// The longest a refusing endpoint's 401s are handed back before one renews again.
const MAX_REFUSAL_WINDOW: Duration = Duration::from_secs(10 * 60);

/// How soon after an endpoint's 401 a 401 to a newer token proves it refuses: long enough for
/// the renewal and the replay between them, short enough that a revocation an hour later is
/// not taken for a refusal.
const PROOF_WINDOW: Duration = Duration::from_secs(60);

/// How many of the latest generations obtained from IQM are remembered.
const REMEMBERED_FROM_IQM: usize = 16;

/// What the session knows of endpoints that answered 401.
///
/// Invariants: a 401 from an endpoint with no proof against it renews the token, so a
/// revocation is recovered at once whatever else is going on; an endpoint proven to refuse has
/// its 401s handed back without a renewal for a window that doubles each time it is proven
/// again (from the configured window up to [`MAX_REFUSAL_WINDOW`]); an answer other than 401
/// from an endpoint forgets everything about it.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    /// By a hash of the endpoint's path, so no path is kept.
    endpoints: HashMap<u64, Endpoint, BuildHasherDefault<DefaultHasher>>,
    /// The latest generations this layer obtained from IQM itself, newest last.
    from_iqm: VecDeque<u64>,
}

#[derive(Debug)]
struct Endpoint {
    /// Tokens of this generation or later were obtained after its last unproven 401.
    obtained_since: u64,
    /// When that 401 came.
    refused_at: Instant,
    /// Until when its 401s are handed back, and how long that window was.
    proven: Option<(Instant, Duration)>,
}

impl Endpoint {
    fn proven_at(&self, now: Instant) -> bool {
        self.proven.is_some_and(|(until, _)| now < until)
    }
}

fn endpoint_key(url: &Url) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(url.path())
}

/// The bit of `key` in [`Refusals::bits`].
fn bit(key: u64) -> u64 {
    1 << (key % 64)
}

impl Refusals {
    /// Records a 401 from `url` to token `generation` at `now`, when the next token obtained
    /// will be of generation `next`; whether it is the endpoint's refusal rather than the
    /// token's fault.
    fn refused(
        &mut self,
        url: &Url,
        generation: u64,
        next: u64,
        now: Instant,
        window: Duration,
    ) -> bool {
        let key = endpoint_key(url);
        if !self.endpoints.contains_key(&key) && self.endpoints.len() >= MAX_ENDPOINTS {
            self.endpoints.retain(|_, endpoint| endpoint.proven_at(now));
            if self.endpoints.len() >= MAX_ENDPOINTS {
                return false;
            }
        }
        let Some(endpoint) = self.endpoints.get_mut(&key) else {
            self.endpoints.insert(
                key,
                Endpoint {
                    obtained_since: next,
                    refused_at: now,
                    proven: None,
                },
            );
            return false;
        };
        if endpoint.proven_at(now) {
            return true;
        }
        let proof = generation >= endpoint.obtained_since
            && self.from_iqm.contains(&generation)
            && now.saturating_duration_since(endpoint.refused_at) <= PROOF_WINDOW;
        if !proof {
            // A token from before its last 401, one taken from elsewhere, or a 401 long after
            // the last: this 401 is the one the next token is judged against.
            endpoint.obtained_since = next;
            endpoint.refused_at = now;
            return false;
        }
        let window = match endpoint.proven {
            Some((_, last)) => last.saturating_mul(2).min(MAX_REFUSAL_WINDOW.max(window)),
            None => window,
        };
        endpoint.obtained_since = next;
        endpoint.refused_at = now;
        endpoint.proven = now.checked_add(window).map(|until| (until, window));
        true
    }

    /// Notes that the token of `generation` was obtained from IQM by this layer.
    pub(super) fn obtained_from_iqm(&mut self, generation: u64) {
        if self.from_iqm.len() == REMEMBERED_FROM_IQM {
            self.from_iqm.pop_front();
        }
        self.from_iqm.push_back(generation);
    }

    /// Forgets the endpoint of `key`, which answered other than 401, unless it is proven to
    /// refuse: a path that refuses one resource or workspace and serves another stays proven
    /// for its window.
    fn served(&mut self, key: u64, now: Instant) {
        if self
            .endpoints
            .get(&key)
            .is_some_and(|endpoint| !endpoint.proven_at(now))
        {
            self.endpoints.remove(&key);
        }
    }

    /// A 64-bit filter of the endpoints known: a response whose endpoint's bit is not set
    /// needs no look at the map, so the hot path takes no lock for it.
    fn bits(&self) -> u64 {
        self.endpoints.keys().fold(0, |bits, key| bits | bit(*key))
    }
}

impl Session {
    /// Whether a 401 from `url` to a request sent with token `generation` is the endpoint
    /// refusing the user rather than the token's fault; such a 401 is handed back without a
    /// renewal.
    pub(crate) fn unauthorized_is_not_the_tokens_fault(&self, url: &Url, generation: u64) -> bool {
        let mut refusals = self.refusals.lock();
        let refused = refusals.refused(
            url,
            generation,
            self.next_generation.load(Ordering::Relaxed),
            self.clock.now(),
            self.policy.endpoint_refusal_window,
        );
        self.refusal_bits.store(refusals.bits(), Ordering::Relaxed);
        refused
    }

    /// Notes that `url` answered other than 401. Cheap enough for every response: one relaxed
    /// load while no endpoint has answered 401, and a hash of the path (no lock) unless this
    /// endpoint, or one sharing its filter bit, has.
    pub(crate) fn served(&self, url: &Url) {
        let bits = self.refusal_bits.load(Ordering::Relaxed);
        if bits == 0 {
            return;
        }
        let key = endpoint_key(url);
        if bits & bit(key) != 0 {
            let mut refusals = self.refusals.lock();
            refusals.served(key, self.clock.now());
            self.refusal_bits.store(refusals.bits(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(10);

    fn from_iqm(generations: std::ops::RangeInclusive<u64>) -> Refusals {
        let mut refusals = Refusals::default();
        for generation in generations {
            refusals.obtained_from_iqm(generation);
        }
        refusals
    }

    #[test]
    fn a_token_taken_from_elsewhere_after_the_401_proves_nothing() {
        let t0 = Instant::now();
        let mut refusals = from_iqm(1..=1);
        let forbidden = url("/forbidden");
        assert!(!refusals.refused(&forbidden, 1, 2, t0, WINDOW));
        // Token 2 was adopted from the shared session (issued before the 401, maybe revoked).
        assert!(!refusals.refused(&forbidden, 2, 3, t0, WINDOW));
        refusals.obtained_from_iqm(3);
        assert!(refusals.refused(&forbidden, 3, 4, t0, WINDOW));
    }

    fn url(path: &str) -> Url {
        Url::parse(&format!("https://api.iqm.com{path}")).unwrap()
    }

    #[test]
    fn a_401_to_one_token_is_the_tokens_fault_and_to_the_next_one_the_endpoints() {
        let t0 = Instant::now();
        let mut refusals = from_iqm(1..=3);
        let forbidden = url("/api/v3/forbidden");
        // Token 1 refused; the next token obtained will be 2.
        assert!(!refusals.refused(&forbidden, 1, 2, t0, WINDOW));
        assert!(
            !refusals.refused(&forbidden, 1, 2, t0, WINDOW),
            "the same token"
        );
        assert!(
            refusals.refused(&forbidden, 2, 3, t0, WINDOW),
            "a renewed token"
        );
        assert!(refusals.refused(&forbidden, 2, 3, t0 + WINDOW / 2, WINDOW));
        // Another endpoint's 401 is still a revocation.
        assert!(!refusals.refused(&url("/api/v3/campaigns"), 2, 3, t0, WINDOW));
    }

    #[test]
    fn a_token_obtained_before_the_401_proves_nothing() {
        let t0 = Instant::now();
        let mut refusals = from_iqm(5..=7);
        let forbidden = url("/forbidden");
        // Token 5 refused while tokens up to 6 already existed (another renewal's).
        assert!(!refusals.refused(&forbidden, 5, 7, t0, WINDOW));
        assert!(!refusals.refused(&forbidden, 6, 7, t0, WINDOW));
        assert!(refusals.refused(&forbidden, 7, 8, t0, WINDOW));
    }

    #[test]
    fn the_window_doubles_each_time_the_endpoint_is_proven_again_and_a_success_resets_it() {
        let t0 = Instant::now();
        let mut refusals = from_iqm(1..=5);
        let forbidden = url("/forbidden");
        let key = endpoint_key(&forbidden);
        assert!(!refusals.refused(&forbidden, 1, 2, t0, WINDOW));
        assert!(refusals.refused(&forbidden, 2, 3, t0, WINDOW));
        refusals.served(key, t0);
        assert!(
            refusals.refused(&forbidden, 2, 3, t0, WINDOW),
            "proven: a success keeps it"
        );
        let t1 = t0 + WINDOW;
        assert!(
            !refusals.refused(&forbidden, 2, 3, t1, WINDOW),
            "window over"
        );
        assert!(refusals.refused(&forbidden, 3, 4, t1, WINDOW));
        let just_before = t1 + WINDOW * 2 - Duration::from_millis(1);
        assert!(refusals.refused(&forbidden, 3, 4, just_before, WINDOW));
        assert!(!refusals.refused(&forbidden, 3, 4, t1 + WINDOW * 2, WINDOW));

        refusals.served(key, t1 + WINDOW * 2);
        let t2 = t1 + WINDOW * 2;
        assert!(!refusals.refused(&forbidden, 4, 5, t2, WINDOW));
        assert!(refusals.refused(&forbidden, 5, 6, t2, WINDOW));
        assert!(
            !refusals.refused(&forbidden, 5, 6, t2 + WINDOW, WINDOW),
            "back to the first window"
        );
    }

    #[test]
    fn a_401_long_after_the_last_proves_nothing() {
        let t0 = Instant::now();
        let mut refusals = from_iqm(1..=3);
        let forbidden = url("/forbidden");
        assert!(!refusals.refused(&forbidden, 1, 2, t0, WINDOW));
        // An hour later token 2 (obtained since) is refused: a revocation, not a refusal.
        let later = t0 + Duration::from_secs(3600);
        assert!(!refusals.refused(&forbidden, 2, 3, later, WINDOW));
        assert!(refusals.refused(&forbidden, 3, 4, later + WINDOW, WINDOW));
    }

    #[test]
    fn the_filter_has_the_bit_of_every_endpoint_known() {
        let t0 = Instant::now();
        let mut refusals = Refusals::default();
        assert_eq!(refusals.bits(), 0);
        let forbidden = url("/forbidden");
        refusals.refused(&forbidden, 1, 2, t0, WINDOW);
        let key = endpoint_key(&forbidden);
        assert_eq!(refusals.bits(), bit(key));
        refusals.served(key, t0);
        assert_eq!(refusals.bits(), 0);
    }

    #[test]
    fn the_memory_is_bounded() {
        let t0 = Instant::now();
        let mut refusals = Refusals::default();
        for n in 0..MAX_ENDPOINTS * 2 {
            refusals.refused(&url(&format!("/campaigns/{n}")), 1, 2, t0, WINDOW);
        }
        assert!(refusals.endpoints.len() <= MAX_ENDPOINTS);
    }
}
