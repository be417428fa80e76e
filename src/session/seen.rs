//! What a replica has seen of the fleet's shared session: per epoch, the highest generation
//! seen (a set below it was restored from an older copy) and the highest seen marked
//! "refreshing" (a copy restored from before the mark has lost it).

/// What a replica has seen of the shared session in the epochs it saw last, most recent first.
#[derive(Debug, Default)]
pub(super) struct Seen(Vec<Epoch>);

#[derive(Debug)]
pub(super) struct Epoch {
    id: String,
    /// The highest generation seen.
    pub(super) seen: u64,
    /// The highest generation seen marked "refreshing".
    pub(super) marked: Option<u64>,
}

/// How many epochs a replica remembers, the ones it saw last: a coordinator restored to an
/// epoch it has forgotten is not told from a new one.
const EPOCHS_KEPT: usize = 8;

impl Seen {
    pub(super) fn get(&self, id: &str) -> Option<&Epoch> {
        self.0.iter().find(|e| e.id == id)
    }

    /// The record of epoch `id`, made if there is none, and moved to the front: the epochs
    /// kept are the ones seen last.
    pub(super) fn entry(&mut self, id: &str) -> &mut Epoch {
        let epoch = match self.0.iter().position(|e| e.id == id) {
            Some(at) => self.0.remove(at),
            None => Epoch {
                id: id.to_owned(),
                seen: 0,
                marked: None,
            },
        };
        self.0.truncate(EPOCHS_KEPT - 1);
        self.0.insert(0, epoch);
        &mut self.0[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epochs_kept_are_the_ones_seen_last() {
        let mut seen = Seen::default();
        seen.entry("old").seen = 22;
        for n in 0..EPOCHS_KEPT - 1 {
            seen.entry(&format!("restart-{n}")).seen = 1;
        }
        seen.entry("old").seen = 22; // seen again, after every restart
        seen.entry("one-more").seen = 1;
        assert_eq!(seen.get("old").map(|e| e.seen), Some(22));
        assert!(seen.get("restart-0").is_none());
        assert_eq!(seen.0.len(), EPOCHS_KEPT);
    }
}
