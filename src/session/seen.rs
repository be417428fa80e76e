//! What a replica has seen of the fleet's shared session: per epoch, the highest generation
//! seen (a set below it was restored from an older copy) and the highest seen marked
//! "refreshing" (a copy restored from before the mark has lost it).

/// What a replica has seen of the shared session in its last few epochs, most recent first.
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

/// How many epochs a replica remembers: a coordinator restored to an epoch before the last
/// few restarts is not told from a new one.
const EPOCHS_KEPT: usize = 4;

impl Seen {
    pub(super) fn get(&self, id: &str) -> Option<&Epoch> {
        self.0.iter().find(|e| e.id == id)
    }

    pub(super) fn entry(&mut self, id: &str) -> &mut Epoch {
        let at = match self.0.iter().position(|e| e.id == id) {
            Some(at) => at,
            None => {
                self.0.truncate(EPOCHS_KEPT - 1);
                self.0.insert(
                    0,
                    Epoch {
                        id: id.to_owned(),
                        seen: 0,
                        marked: None,
                    },
                );
                0
            }
        };
        &mut self.0[at]
    }
}
