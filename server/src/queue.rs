//! The queue of jobs waiting for a slot, fair between users: the next job to run is the oldest
//! one of the user with the fewest jobs running, and between users with as many running, of
//! the one served least recently (round robin), so one user's 300 jobs do not delay another
//! user's next job by 300. Pure data, no I/O: the job manager ([`crate::jobs`]) owns it behind
//! its lock.

use std::collections::{HashMap, VecDeque};

/// One waiting job.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Waiting {
    id: String,
    /// Submission order ([`crate::model::Job::seq`]).
    seq: u64,
    /// Bytes its upload holds on disk while it waits.
    bytes: u64,
}

/// Per-user caps that decide whether a job may wait or run.
#[derive(Clone, Copy, Debug)]
pub struct UserCaps {
    /// Most jobs of one user waiting.
    pub queued: usize,
    /// Most upload bytes of one user's waiting jobs together.
    pub queued_bytes: u64,
    /// Most jobs of one user running at once.
    pub running: usize,
}

/// Why a job may not join the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    TooManyQueued { queued: usize },
    TooManyBytes { queued_bytes: u64 },
}

#[derive(Default, Debug)]
pub struct FairQueue {
    /// Each user's waiting jobs, oldest first.
    waiting: HashMap<String, VecDeque<Waiting>>,
    /// How many jobs of each user run now (entries at 0 are removed).
    running: HashMap<String, usize>,
    /// When each user with jobs waiting or running last had one started ([`Self::tick`]).
    served: HashMap<String, u64>,
    /// Counts the jobs started.
    tick: u64,
}

impl FairQueue {
    /// Whether `owner` may queue one more job of `bytes`.
    pub fn admits(&self, owner: &str, bytes: u64, caps: UserCaps) -> Result<(), Refusal> {
        let (queued, queued_bytes) = self.waiting.get(owner).map_or((0, 0), |w| {
            (w.len(), w.iter().map(|j| j.bytes).sum::<u64>())
        });
        if queued >= caps.queued {
            return Err(Refusal::TooManyQueued { queued });
        }
        if queued_bytes.saturating_add(bytes) > caps.queued_bytes {
            return Err(Refusal::TooManyBytes { queued_bytes });
        }
        Ok(())
    }

    /// How many jobs `owner` has waiting.
    pub fn queued_by(&self, owner: &str) -> usize {
        self.waiting.get(owner).map_or(0, |w| w.len())
    }

    /// Adds a job at the end of its owner's queue (the caller checked [`Self::admits`]).
    pub fn push(&mut self, owner: &str, id: &str, seq: u64, bytes: u64) {
        let waiting = self.waiting.entry(owner.to_string()).or_default();
        let at = waiting.partition_point(|w| w.seq < seq);
        waiting.insert(
            at,
            Waiting {
                id: id.to_string(),
                seq,
                bytes,
            },
        );
    }

    /// Takes a waiting job out (it was cancelled); whether it was waiting.
    pub fn remove(&mut self, id: &str) -> bool {
        let Some(owner) = self.owner_of(id) else {
            return false;
        };
        let waiting = self.waiting.get_mut(&owner).expect("owner has a queue");
        waiting.retain(|w| w.id != id);
        if waiting.is_empty() {
            self.waiting.remove(&owner);
        }
        self.forget_if_idle(&owner);
        true
    }

    /// The next job to run, counted as running from now on: among users under their running
    /// cap, the one with the fewest running jobs, ties to the user served least recently,
    /// then to the oldest waiting job. `None` when nothing waits or every waiting user is at
    /// the cap.
    pub fn pop(&mut self, caps: UserCaps) -> Option<(String, String)> {
        let owner = self
            .waiting
            .iter()
            .filter(|(owner, _)| self.running_of(owner) < caps.running)
            .min_by_key(|(owner, w)| self.rank(owner, w[0].seq))
            .map(|(owner, _)| owner.clone())?;
        let waiting = self.waiting.get_mut(&owner).expect("chosen owner waits");
        let job = waiting.pop_front().expect("queues are never empty");
        if waiting.is_empty() {
            self.waiting.remove(&owner);
        }
        *self.running.entry(owner.clone()).or_default() += 1;
        self.tick += 1;
        self.served.insert(owner.clone(), self.tick);
        Some((owner, job.id))
    }

    /// Whether [`Self::pop`] would return a job now.
    pub fn ready(&self, caps: UserCaps) -> bool {
        self.waiting
            .keys()
            .any(|owner| self.running_of(owner) < caps.running)
    }

    /// A job of `owner` that [`Self::pop`] returned has ended.
    pub fn finished(&mut self, owner: &str) {
        if let Some(n) = self.running.get_mut(owner) {
            *n -= 1;
            if *n == 0 {
                self.running.remove(owner);
            }
        }
        self.forget_if_idle(owner);
    }

    /// Where the next waiting job of `owner`, submitted as `seq`, comes in the order of turns.
    fn rank(&self, owner: &str, seq: u64) -> (usize, u64, u64) {
        let served = self.served.get(owner).copied().unwrap_or(0);
        (self.running_of(owner), served, seq)
    }

    /// A user with nothing waiting or running starts afresh next time.
    fn forget_if_idle(&mut self, owner: &str) {
        if !self.waiting.contains_key(owner) && !self.running.contains_key(owner) {
            self.served.remove(owner);
        }
    }

    /// 1-based place of a waiting job in the order [`Self::pop`] would take them if nothing
    /// ended meanwhile (the running cap aside): the turns are played out on a copy.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.owner_of(id)?;
        let mut turns = FairQueue {
            waiting: self.waiting.clone(),
            running: self.running.clone(),
            served: self.served.clone(),
            tick: self.tick,
        };
        let unlimited = UserCaps {
            queued: usize::MAX,
            queued_bytes: u64::MAX,
            running: usize::MAX,
        };
        (1..).find_map(|n| match turns.pop(unlimited) {
            Some((_, next)) if next == id => Some(Some(n)),
            Some(_) => None,
            None => Some(None),
        })?
    }

    /// Jobs waiting, all users together.
    pub fn len(&self) -> usize {
        self.waiting.values().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Every waiting job's id.
    pub fn ids(&self) -> Vec<String> {
        self.waiting
            .values()
            .flat_map(|w| w.iter().map(|j| j.id.clone()))
            .collect()
    }

    /// How many jobs of `owner` run now.
    pub fn running_of(&self, owner: &str) -> usize {
        self.running.get(owner).copied().unwrap_or(0)
    }

    fn owner_of(&self, id: &str) -> Option<String> {
        self.waiting
            .iter()
            .find(|(_, w)| w.iter().any(|j| j.id == id))
            .map(|(owner, _)| owner.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: UserCaps = UserCaps {
        queued: 100,
        queued_bytes: 1 << 30,
        running: 100,
    };

    fn queue(jobs: &[(&str, &str)]) -> FairQueue {
        let mut q = FairQueue::default();
        for (seq, (owner, id)) in jobs.iter().enumerate() {
            q.push(owner, id, seq as u64, 10);
        }
        q
    }

    fn drain(q: &mut FairQueue, caps: UserCaps) -> Vec<String> {
        std::iter::from_fn(|| q.pop(caps).map(|(_, id)| id)).collect()
    }

    #[test]
    fn users_take_turns_whoever_submitted_first() {
        let mut q = queue(&[
            ("a", "a1"),
            ("a", "a2"),
            ("a", "a3"),
            ("b", "b1"),
            ("c", "c1"),
            ("b", "b2"),
        ]);
        assert_eq!(drain(&mut q, CAPS), ["a1", "b1", "c1", "a2", "b2", "a3"]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_late_user_goes_before_the_busy_users_backlog() {
        let mut q = queue(&[("a", "a1"), ("a", "a2"), ("a", "a3")]);
        assert_eq!(q.pop(CAPS), Some(("a".into(), "a1".into())));
        q.push("admin", "x1", 99, 10);
        assert_eq!(q.position("x1"), Some(1));
        assert_eq!(q.position("a2"), Some(2));
        assert_eq!(q.pop(CAPS), Some(("admin".into(), "x1".into())));
    }

    #[test]
    fn after_a_turn_the_user_who_waited_goes_first() {
        let mut q = queue(&[("a", "a0"), ("a", "a1"), ("a", "a2")]);
        assert_eq!(q.pop(CAPS).map(|(_, id)| id), Some("a0".into()));
        q.push("b", "b1", 10, 10);
        q.finished("a");
        // Both have nothing running now; a had the last turn.
        assert_eq!(q.position("b1"), Some(1));
        assert_eq!(drain(&mut q, CAPS), ["b1", "a1", "a2"]);
    }

    #[test]
    fn running_cap_holds_a_user_back_until_a_job_ends() {
        let caps = UserCaps { running: 1, ..CAPS };
        let mut q = queue(&[("a", "a1"), ("a", "a2")]);
        assert_eq!(q.pop(caps).map(|(_, id)| id), Some("a1".into()));
        assert_eq!(q.pop(caps), None);
        q.finished("a");
        assert_eq!(q.pop(caps).map(|(_, id)| id), Some("a2".into()));
    }

    #[test]
    fn positions_follow_the_pop_order() {
        let mut q = queue(&[("a", "a1"), ("a", "a2"), ("b", "b1"), ("b", "b2")]);
        let predicted: Vec<_> = ["a1", "b1", "a2", "b2"]
            .iter()
            .map(|id| q.position(id).unwrap())
            .collect();
        assert_eq!(predicted, [1, 2, 3, 4]);
        assert_eq!(drain(&mut q, CAPS), ["a1", "b1", "a2", "b2"]);
    }

    #[test]
    fn positions_match_the_turns_taken_in_a_busy_mix() {
        // A deterministic mix of users, submissions, starts and ends.
        let mut q = FairQueue::default();
        let mut state: u64 = 7;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        let mut running: Vec<String> = Vec::new();
        for seq in 0..200u64 {
            let owner = ["a", "b", "c", "d"][next() % 4];
            q.push(owner, &format!("{owner}{seq}"), seq, 1);
            match next() % 3 {
                0 => {
                    if let Some((o, _)) = q.pop(CAPS) {
                        running.push(o);
                    }
                }
                1 if !running.is_empty() => {
                    let o = running.remove(next() % running.len());
                    q.finished(&o);
                }
                _ => {}
            }
        }
        let mut ids = q.ids();
        ids.sort_by_key(|id| q.position(id));
        let predicted: Vec<usize> = ids.iter().map(|id| q.position(id).unwrap()).collect();
        assert_eq!(predicted, (1..=ids.len()).collect::<Vec<_>>());
        assert_eq!(drain(&mut q, CAPS), ids);
    }

    #[test]
    fn caps_on_count_and_bytes() {
        let caps = UserCaps {
            queued: 2,
            queued_bytes: 25,
            running: 1,
        };
        let mut q = FairQueue::default();
        assert_eq!(q.admits("a", 10, caps), Ok(()));
        q.push("a", "a1", 1, 10);
        assert_eq!(
            q.admits("a", 20, caps),
            Err(Refusal::TooManyBytes { queued_bytes: 10 })
        );
        q.push("a", "a2", 2, 10);
        assert_eq!(
            q.admits("a", 1, caps),
            Err(Refusal::TooManyQueued { queued: 2 })
        );
        assert_eq!(q.admits("b", 1, caps), Ok(()));
        assert!(q.remove("a1"));
        assert!(!q.remove("a1"));
        assert_eq!(q.admits("a", 10, caps), Ok(()));
        assert_eq!(q.len(), 1);
    }
}
