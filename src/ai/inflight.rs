//! The free-text answers being graded by a model, one turn per user at a time.
//!
//! Grading runs in a task that outlives the socket which asked for it (the generation
//! belongs to the stream, not the socket). While it runs, every other command of the user
//! (a reconnect's greeting, the same answer sent again, the deadline timer, an admin) waits
//! for it in [`crate::commands::execute`], so it sees the recorded answer and feedback: no
//! second feedback, no expiry recorded before an answer that arrived in time. The wait is
//! bounded: a grading ends within two model timeouts (one retry of an unusable reply),
//! then falls back to the offline grader.
//!
//! The question writer of adaptive tests ([`crate::ws::question`]) takes the same turn
//! while it generates, for the same reasons: one question per position, recorded before
//! anything else of the user's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

type Gates = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>;

/// Per user, the gate a grading holds while it runs.
#[derive(Default)]
pub struct Gradings {
    gates: Gates,
}

/// Held by one grading until its result is recorded; dropping it lets the user's other
/// commands through.
pub struct GradingTurn {
    guard: Option<OwnedMutexGuard<()>>,
    gate: Arc<tokio::sync::Mutex<()>>,
    gates: Gates,
    user_id: String,
}

impl Drop for GradingTurn {
    fn drop(&mut self) {
        drop(self.guard.take());
        release(&self.gates, &self.user_id, &self.gate);
    }
}

fn lock(gates: &Gates) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
    // The map is consistent after every statement; a panic elsewhere leaves it usable.
    gates.lock().unwrap_or_else(|e| e.into_inner())
}

/// Forgets the user's gate when nobody but the map holds it any more, so the map does not
/// grow with every user who ever answered.
fn release(gates: &Gates, user_id: &str, gate: &Arc<tokio::sync::Mutex<()>>) {
    let mut map = lock(gates);
    // The map's clone and the caller's: nobody else waits on or holds it.
    if Arc::strong_count(gate) <= 2 && map.get(user_id).is_some_and(|g| Arc::ptr_eq(g, gate)) {
        map.remove(user_id);
    }
}

impl Gradings {
    fn gate(&self, user_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.gates)
            .entry(user_id.to_string())
            .or_default()
            .clone()
    }

    /// Waits until no grading of `user_id` runs, then takes the user's turn.
    pub async fn begin(&self, user_id: &str) -> GradingTurn {
        let gate = self.gate(user_id);
        let guard = gate.clone().lock_owned().await;
        GradingTurn {
            guard: Some(guard),
            gate,
            gates: self.gates.clone(),
            user_id: user_id.to_string(),
        }
    }

    /// Waits until no grading of `user_id` runs (at once when none does).
    pub async fn wait(&self, user_id: &str) {
        let Some(gate) = lock(&self.gates).get(user_id).cloned() else {
            return;
        };
        drop(gate.lock().await);
        release(&self.gates, user_id, &gate);
    }

    /// True while a grading of `user_id` holds its turn.
    pub fn is_grading(&self, user_id: &str) -> bool {
        lock(&self.gates)
            .get(user_id)
            .is_some_and(|g| g.try_lock().is_err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn others_wait_for_the_turn_and_the_map_forgets_finished_users() {
        let gradings = Arc::new(Gradings::default());
        gradings.wait("alice").await; // nothing in flight: at once
        let turn = gradings.begin("alice").await;
        assert!(gradings.is_grading("alice"));
        let waiter = {
            let gradings = gradings.clone();
            tokio::spawn(async move { gradings.wait("alice").await })
        };
        // Bob is not held up by alice's grading.
        tokio::time::timeout(Duration::from_secs(1), gradings.wait("bob"))
            .await
            .unwrap();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(turn);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(!gradings.is_grading("alice"));
        assert!(lock(&gradings.gates).is_empty());
    }
}
