//! The live sessions of this node, one per user, and the connection cap.
//!
//! A new session of a user evicts the old one by the OLD session's own id, so the eviction
//! can never hit the new connection. Each user also has one command lock, shared by their
//! old and new sessions and by admin commands, so a new session starts reading the stream
//! only after the old session's in-flight command has been recorded.
//!
//! Each session carries the generation of its claim on the user ([`crate::ownership`]):
//! a registration or an eviction notice only ever removes a session of a LOWER generation,
//! so the order in which claims and notices reach this node does not matter. Eviction
//! across nodes ([`crate::cluster`]) cancels the same token as a local one.
//!
//! A claim's notice can also come BEFORE an older claim's session registers here: that
//! claim committed first, but its session was still on its way to [`Registry::register`].
//! So a notice that finds no session of the user to leave alone (none, or an older one) is
//! remembered for [`ANNOUNCED_FOR`], and an older claim registering meanwhile is born
//! evicted. Connects need no second look at the owner table for this; a notice that never
//! arrives (the listener was reconnecting) is caught by the cluster's periodic check.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::store::streams::Known;

/// A user's command lock and what it guards: the stream as the command path knows it.
pub type UserLock = Arc<tokio::sync::Mutex<Known>>;

struct Entry {
    session_id: Uuid,
    /// The generation of the claim that made this session the user's owner.
    generation: i64,
    evicted: CancellationToken,
    changed: Arc<Notify>,
    /// The user's command lock, with what the command path knows of their stream.
    lock: UserLock,
}

/// How long an announced claim is remembered for sessions that register late. A claim's
/// caller registers right after its commit; one held up longer than this is still caught
/// by the cluster's periodic check of every session against the owner table.
pub const ANNOUNCED_FOR: Duration = Duration::from_secs(10);
/// At most this many announced claims are remembered (the oldest go first): a burst of
/// connects on other nodes cannot grow this node's memory without bound.
const ANNOUNCED_MAX: usize = 100_000;

/// The live sessions and the recently announced claims, under one lock, so a notice and a
/// registration of the same user see each other whichever comes first.
#[derive(Default)]
struct Sessions {
    live: HashMap<String, Entry>,
    announced: Announced,
}

/// Claims announced for users whose session here they did not find: the newest generation
/// of each user, and the order they came in, to forget them again.
#[derive(Default)]
struct Announced {
    newest: HashMap<String, i64>,
    order: VecDeque<(Instant, String, i64)>,
}

impl Announced {
    fn remember(&mut self, user_id: &str, generation: i64, now: Instant) {
        self.forget_older_than(now);
        while self.order.len() >= ANNOUNCED_MAX {
            self.forget_first();
        }
        let newest = self.newest.entry(user_id.to_string()).or_insert(generation);
        *newest = (*newest).max(generation);
        self.order.push_back((now, user_id.to_string(), generation));
    }

    fn forget_older_than(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(at, _, _)| now.saturating_duration_since(*at) >= ANNOUNCED_FOR)
        {
            self.forget_first();
        }
    }

    fn forget_first(&mut self) {
        if let Some((_, user_id, generation)) = self.order.pop_front() {
            // A later notice of the same user is still remembered under its own entry.
            if self.newest.get(&user_id) == Some(&generation) {
                self.newest.remove(&user_id);
            }
        }
    }

    /// Whether a claim newer than `generation` was announced for the user lately.
    fn newer_than(&mut self, user_id: &str, generation: i64, now: Instant) -> bool {
        self.forget_older_than(now);
        self.newest.get(user_id).is_some_and(|&g| g > generation)
    }
}

pub struct Registry {
    sessions: Mutex<Sessions>,
    live: Arc<AtomicUsize>,
    cap: usize,
    /// Generations handed out when this process is the whole cluster (SQLite).
    local_generation: AtomicI64,
}

/// A reserved connection slot; dropping it frees the slot.
pub struct Slot {
    live: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A session's membership: how it hears from outside its socket.
pub struct Registration {
    /// Cancelled when a newer connection of the same user takes over.
    pub evicted: CancellationToken,
    /// Notified when someone else (an admin) changed the stream: read it again. Several
    /// notifications before the session looks are one.
    pub changed: Arc<Notify>,
    /// Whether an older session of the user was evicted.
    pub evicted_other: bool,
}

impl Registry {
    pub fn new(cap: usize) -> Self {
        Self {
            sessions: Mutex::new(Sessions::default()),
            live: Arc::new(AtomicUsize::new(0)),
            cap,
            local_generation: AtomicI64::new(0),
        }
    }

    /// Reserves a connection slot, or `None` when the server is full.
    pub fn try_reserve(&self) -> Option<Slot> {
        let previous = self.live.fetch_add(1, Ordering::AcqRel);
        let slot = Slot {
            live: self.live.clone(),
        };
        if previous >= self.cap {
            drop(slot);
            return None;
        }
        Some(slot)
    }

    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        // The map is consistent after every statement, so a panic elsewhere cannot leave it
        // half-updated; keep serving.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next generation of a claim made in this process alone (SQLite, where one node
    /// is the whole cluster): increasing, like the database's on PostgreSQL.
    pub fn next_local_generation(&self) -> i64 {
        self.local_generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Makes `session_id`, whose claim has `generation`, the user's live session, evicting
    /// the previous one. When the user's current session holds a newer claim, or a newer
    /// claim was announced lately (the claims reached this node out of order), the new one
    /// is born evicted instead.
    pub fn register(&self, user_id: &str, session_id: Uuid, generation: i64) -> Registration {
        self.register_at(user_id, session_id, generation, Instant::now())
    }

    fn register_at(
        &self,
        user_id: &str,
        session_id: Uuid,
        generation: i64,
        now: Instant,
    ) -> Registration {
        let evicted = CancellationToken::new();
        let changed = Arc::new(Notify::new());
        let mut sessions = self.sessions();
        let overtaken = sessions
            .live
            .get(user_id)
            .is_some_and(|current| current.generation > generation)
            || sessions.announced.newer_than(user_id, generation, now);
        if overtaken {
            evicted.cancel();
            return Registration {
                evicted,
                changed,
                evicted_other: false,
            };
        }
        let (lock, evicted_other) = match sessions.live.remove(user_id) {
            Some(old) => {
                old.evicted.cancel();
                (old.lock, true)
            }
            None => (UserLock::default(), false),
        };
        sessions.live.insert(
            user_id.to_string(),
            Entry {
                session_id,
                generation,
                evicted: evicted.clone(),
                changed: changed.clone(),
                lock,
            },
        );
        Registration {
            evicted,
            changed,
            evicted_other,
        }
    }

    /// Evicts the user's session here if another one, `owner`, has since claimed the user
    /// with a higher `generation` (on another node, or here). Returns whether one was.
    pub fn evict_older(&self, user_id: &str, owner: Uuid, generation: i64) -> bool {
        Self::evict_older_in(&mut self.sessions(), user_id, owner, generation)
    }

    fn evict_older_in(
        sessions: &mut Sessions,
        user_id: &str,
        owner: Uuid,
        generation: i64,
    ) -> bool {
        let older = sessions
            .live
            .get(user_id)
            .is_some_and(|e| e.session_id != owner && e.generation < generation);
        if older {
            if let Some(old) = sessions.live.remove(user_id) {
                old.evicted.cancel();
            }
        }
        older
    }

    /// A claim announced by a node (this one included): evicts the user's older session
    /// here as [`Registry::evict_older`] does and, unless the session live here is the
    /// claim's own or a newer one, remembers it for [`ANNOUNCED_FOR`] so that a session of
    /// an older claim registering meanwhile is born evicted. Returns whether a session was
    /// evicted.
    pub fn announced(&self, user_id: &str, owner: Uuid, generation: i64) -> bool {
        self.announced_at(user_id, owner, generation, Instant::now())
    }

    fn announced_at(&self, user_id: &str, owner: Uuid, generation: i64, now: Instant) -> bool {
        let mut sessions = self.sessions();
        let evicted = Self::evict_older_in(&mut sessions, user_id, owner, generation);
        // A session live here at this generation or above already turns older ones away.
        let settled_here = sessions
            .live
            .get(user_id)
            .is_some_and(|e| e.session_id == owner || e.generation >= generation);
        if !settled_here {
            sessions.announced.remember(user_id, generation, now);
        }
        evicted
    }

    /// Evicts `session_id` if it is still the user's live session here: the database refused
    /// its append, so another session owns the user, whether or not this node heard of it.
    pub fn evict(&self, user_id: &str, session_id: Uuid) {
        let mut sessions = self.sessions();
        if sessions
            .live
            .get(user_id)
            .is_some_and(|e| e.session_id == session_id)
        {
            if let Some(old) = sessions.live.remove(user_id) {
                old.evicted.cancel();
            }
        }
    }

    /// Every live session of this node as (user, session, generation), for checking them
    /// against the owners recorded in the database.
    pub fn sessions_with_generation(&self) -> Vec<(String, Uuid, i64)> {
        self.sessions()
            .live
            .iter()
            .map(|(user, e)| (user.clone(), e.session_id, e.generation))
            .collect()
    }

    /// Removes the user's entry only if it is still this session's.
    pub fn unregister(&self, user_id: &str, session_id: Uuid) {
        let mut sessions = self.sessions();
        if sessions
            .live
            .get(user_id)
            .is_some_and(|e| e.session_id == session_id)
        {
            sessions.live.remove(user_id);
        }
    }

    /// The user's command lock (their live session's, or a fresh one when they have none):
    /// whoever holds it may change the user's stream, and it keeps what the command path
    /// knows of that stream between commands, for as long as the session lives.
    pub fn user_lock(&self, user_id: &str) -> UserLock {
        self.sessions()
            .live
            .get(user_id)
            .map(|e| e.lock.clone())
            .unwrap_or_default()
    }

    /// Tells the user's live session, if any, that its stream changed.
    pub fn notify(&self, user_id: &str) {
        if let Some(entry) = self.sessions().live.get(user_id) {
            entry.changed.notify_one();
        }
    }

    /// The users with a live session on this node, in no particular order.
    pub fn live_users(&self) -> Vec<String> {
        self.sessions().live.keys().cloned().collect()
    }

    pub fn is_live(&self, user_id: &str, session_id: Uuid) -> bool {
        self.sessions()
            .live
            .get(user_id)
            .is_some_and(|e| e.session_id == session_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_session_evicts_the_old_one_and_only_the_old_one() {
        let registry = Registry::new(10);
        let (old, new) = (Uuid::new_v4(), Uuid::new_v4());
        let first = registry.register("alice", old, 1);
        assert!(!first.evicted_other);
        let lock = registry.user_lock("alice");
        let second = registry.register("alice", new, 2);
        assert!(second.evicted_other);
        assert!(first.evicted.is_cancelled());
        assert!(!second.evicted.is_cancelled());
        assert!(
            Arc::ptr_eq(&lock, &registry.user_lock("alice")),
            "the new session inherits the user's command lock"
        );
        // the old session leaving must not remove the new one
        registry.unregister("alice", old);
        assert!(registry.is_live("alice", new));
        assert_eq!(registry.live_users(), ["alice"]);
        registry.unregister("alice", new);
        assert!(!registry.is_live("alice", new));
        assert!(registry.live_users().is_empty());
    }

    #[test]
    fn claims_that_arrive_out_of_order_leave_the_newest_session_live() {
        let registry = Registry::new(10);
        let (older, newer, elsewhere) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let live = registry.register("bob", newer, 5);
        // the older claim registers late: born evicted, the newer one untouched
        let late = registry.register("bob", older, 4);
        assert!(late.evicted.is_cancelled());
        assert!(!late.evicted_other);
        assert!(!live.evicted.is_cancelled());
        assert!(registry.is_live("bob", newer));
        // a stale notice (a lower generation) evicts nothing, nor does our own
        assert!(!registry.evict_older("bob", elsewhere, 3));
        assert!(!registry.evict_older("bob", newer, 5));
        assert!(!live.evicted.is_cancelled());
        // a newer claim on another node evicts it
        assert!(registry.evict_older("bob", elsewhere, 6));
        assert!(live.evicted.is_cancelled());
        assert!(!registry.is_live("bob", newer));
        assert!(registry.sessions_with_generation().is_empty());
    }

    #[test]
    fn a_claim_announced_before_an_older_one_registers_leaves_that_one_born_evicted() {
        let registry = Registry::new(10);
        let (older, newer) = (Uuid::new_v4(), Uuid::new_v4());
        let t0 = Instant::now();
        // gen 8 (another node) is announced while gen 7's session is on its way here
        assert!(!registry.announced_at("cy", newer, 8, t0));
        let late = registry.register_at("cy", older, 7, t0 + Duration::from_secs(1));
        assert!(late.evicted.is_cancelled());
        assert!(!registry.is_live("cy", older));
        // a later claim still registers
        let next = registry.register_at("cy", Uuid::new_v4(), 9, t0 + Duration::from_secs(2));
        assert!(!next.evicted.is_cancelled());
    }

    #[test]
    fn an_announced_claim_is_forgotten_after_a_while_and_its_own_session_is_not_remembered() {
        let registry = Registry::new(10);
        let t0 = Instant::now();
        let (mine, theirs) = (Uuid::new_v4(), Uuid::new_v4());
        registry.announced_at("di", theirs, 3, t0);
        let after = t0 + ANNOUNCED_FOR;
        let late = registry.register_at("di", mine, 2, after);
        assert!(
            !late.evicted.is_cancelled(),
            "left to the periodic check once forgotten"
        );
        // the notice of the live session's own claim, or a stale one: nothing evicted,
        // nothing remembered
        assert!(!registry.announced_at("di", mine, 2, after));
        assert!(!registry.announced_at("di", theirs, 1, after));
        assert!(registry.sessions().announced.newest.is_empty());
        // a newer claim evicts the live session, and an older one registering next is
        // born evicted too
        assert!(registry.announced_at("di", theirs, 4, after));
        assert!(!registry.is_live("di", mine));
        let older = registry.register_at("di", Uuid::new_v4(), 3, after);
        assert!(older.evicted.is_cancelled());
    }

    #[test]
    fn announced_claims_are_bounded() {
        let registry = Registry::new(10);
        let t0 = Instant::now();
        for i in 0..ANNOUNCED_MAX + 10 {
            registry.announced_at(&format!("u{i}"), Uuid::new_v4(), 1, t0);
        }
        let sessions = registry.sessions();
        assert_eq!(sessions.announced.order.len(), ANNOUNCED_MAX);
        assert_eq!(sessions.announced.newest.len(), ANNOUNCED_MAX);
        assert!(!sessions.announced.newest.contains_key("u0"));
    }

    #[test]
    fn the_cap_is_enforced_and_slots_are_given_back() {
        let registry = Registry::new(2);
        let a = registry.try_reserve().unwrap();
        let _b = registry.try_reserve().unwrap();
        assert!(registry.try_reserve().is_none());
        drop(a);
        assert!(registry.try_reserve().is_some());
    }
}
