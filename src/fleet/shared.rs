//! [`SharedTokens`]: the shared session as a coordinator read it.

use std::time::Duration;

use crate::store::StoredTokens;

/// The shared session as a coordinator read it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedTokens {
    /// The shared session's epoch: an id the coordinator gives the session when it is created,
    /// kept for as long as it lives. A coordinator that lost everything (a restart without
    /// persistence) starts a new epoch, whose generations start over; one restored from an
    /// older copy keeps the epoch, with an older generation.
    pub epoch: String,
    /// The shared generation: it grows with every published set and every logout.
    pub generation: u64,
    /// The token set, `None` when there is none (never published, logged out) or it cannot be
    /// read (a foreign format, or encrypted with another key).
    pub tokens: Option<StoredTokens>,
    /// How long the set's access token still lives, measured on the coordinator's clock when it
    /// keeps one: it takes the place of the set's wall-clock expiry, which is only as right as
    /// the clock of the machine that published it.
    pub expires_in: Option<Duration>,
    /// How long ago the set was obtained from IQM (its auth call sent), on the coordinator's
    /// clock when it keeps one: a replica that logged out since never takes it.
    pub obtained_ago: Option<Duration>,
    /// Whether the holder of the lease was about to present this set's refresh token: it may
    /// have been spent, so it is not presented again.
    pub refreshing: bool,
    /// Whether something was stored that could not be read as a token set.
    pub unreadable: bool,
    /// Whether the set is sealed under an encryption key this replica does not hold: it renews
    /// on its own and never writes over that set.
    pub foreign_key: bool,
    /// How long the fleet's renewals still pause after the last holder's renewal failed.
    pub paused_for: Option<Duration>,
    /// How many holders' renewals failed in a row since the last published set.
    pub failures_in_a_row: u32,
    /// How many replicas read the shared session in the last hour, this one included (0: not
    /// known). While the coordinator is out of reach, each replica keeps to this share of the
    /// account's budget for failed auth calls, and of the request rate.
    pub replicas: u32,
    /// How long IQM's rate-limit window of the account stays closed: a replica answered 429
    /// recorded it with [`close_window`](super::SessionCoordinator::close_window), and no
    /// replica sends a request before it opens.
    pub rate_limited_for: Option<Duration>,
}

impl SharedTokens {
    /// A readable shared set.
    pub fn new(generation: u64, tokens: Option<StoredTokens>, refreshing: bool) -> Self {
        Self {
            epoch: String::new(),
            generation,
            tokens,
            expires_in: None,
            obtained_ago: None,
            refreshing,
            unreadable: false,
            foreign_key: false,
            paused_for: None,
            failures_in_a_row: 0,
            replicas: 0,
            rate_limited_for: None,
        }
    }

    /// The same, with the fleet's renewals paused for `pause` more.
    #[must_use]
    pub fn paused(self, pause: Duration) -> Self {
        Self {
            paused_for: (!pause.is_zero()).then_some(pause),
            ..self
        }
    }

    /// The same, in the session's epoch `epoch`.
    #[must_use]
    pub fn in_epoch(self, epoch: impl Into<String>) -> Self {
        Self {
            epoch: epoch.into(),
            ..self
        }
    }

    /// The same, its access token living `expires_in` more on the coordinator's clock.
    #[must_use]
    pub fn expiring_in(self, expires_in: Duration) -> Self {
        Self {
            expires_in: Some(expires_in),
            ..self
        }
    }

    /// The same, obtained from IQM `ago` on the coordinator's clock.
    #[must_use]
    pub fn obtained(self, ago: Duration) -> Self {
        Self {
            obtained_ago: Some(ago),
            ..self
        }
    }

    /// The same, with the fleet's renewals failed `in_a_row` since the last published set.
    #[must_use]
    pub fn with_failures(self, in_a_row: u32) -> Self {
        Self {
            failures_in_a_row: in_a_row,
            ..self
        }
    }

    /// The same, read by `replicas` replicas in the last hour.
    #[must_use]
    pub fn with_replicas(self, replicas: u32) -> Self {
        Self { replicas, ..self }
    }

    /// The same, with IQM's rate-limit window closed for `for_` more.
    #[must_use]
    pub fn rate_limited(self, for_: Duration) -> Self {
        Self {
            rate_limited_for: (!for_.is_zero()).then_some(for_),
            ..self
        }
    }

    /// A shared session holding something that is not a token set this layer can read.
    pub fn unreadable(generation: u64) -> Self {
        Self {
            unreadable: true,
            ..Self::new(generation, None, false)
        }
    }

    /// A shared session holding a set sealed under a key this replica does not hold.
    pub fn sealed_with_another_key(generation: u64) -> Self {
        Self {
            foreign_key: true,
            ..Self::unreadable(generation)
        }
    }
}
