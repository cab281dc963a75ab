//! Several server processes on one database: each node's heartbeat makes it, and its socket
//! count, visible to `GET /api/admin/connections` on every other node; a node that stops
//! leaves the list at once, and one that stops beating (killed) when its lease runs out.

use std::future::Future;
use std::time::{Duration, Instant};

use assessd::auth::Role;
use assessd::nodes::{self, Membership};
use chrono::Utc;
use serde_json::Value;

use crate::helpers::{spawn_app_with, start_on, Backend, TestApp};

/// Fast heartbeats, so the test waits for milliseconds, not seconds.
const MEMBERSHIP: Membership = Membership {
    every: Duration::from_millis(50),
    lease: Duration::from_millis(600),
};

/// Polls `check` until it gives a value, for at most 10 s.
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn connections(app: &TestApp) -> Value {
    let response = app
        .http
        .get(app.url("/api/admin/connections"))
        .bearer_auth(app.token("root", Role::Admin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn two_nodes_see_each_other(backend: Backend) {
    let Some(a) = spawn_app_with(backend, |s| {
        s.node_id = "node-a".into();
        s.membership = MEMBERSHIP;
    })
    .await
    else {
        return;
    };
    let b = start_on(a.db.alias(), |s| {
        s.node_id = "node-b".into();
        s.membership = MEMBERSHIP;
    })
    .await;
    let _alice = b.connect("alice").await;
    let _bob = b.connect("bob").await;
    let _carol = a.connect("carol").await;

    // A sees B's two sockets once B has beaten since they opened, and its own one now.
    let seen = until("node-a to see node-b's sockets", || async {
        let seen = connections(&a).await;
        (seen["by_node"]["node-b"] == 2).then_some(seen)
    })
    .await;
    assert_eq!(seen["by_node"]["node-a"], 1, "{seen}");
    assert_eq!(seen["total"], 3, "{seen}");
    assert_eq!(
        seen["by_node"].as_object().map(|nodes| nodes.len()),
        Some(2),
        "{seen}"
    );
    // And the other way round.
    until("node-b to see node-a", || async {
        (connections(&b).await["by_node"]["node-a"] == 1).then_some(())
    })
    .await;

    // A node that stops says so: gone from the list without waiting out its lease.
    drop((_alice, _bob));
    b.stop().await;
    let after = connections(&a).await;
    assert!(after["by_node"].get("node-b").is_none(), "{after}");
    assert_eq!(after["total"], 1, "{after}");
}

async fn a_node_that_stops_beating_drops_out(backend: Backend) {
    let Some(a) = spawn_app_with(backend, |s| {
        s.node_id = "node-a".into();
        s.membership = MEMBERSHIP;
    })
    .await
    else {
        return;
    };
    // A node killed after one heartbeat: its row stays, and ages.
    nodes::beat(&a.state.db, "killed", Utc::now(), 7)
        .await
        .unwrap();
    let seen = connections(&a).await;
    assert_eq!(seen["by_node"]["killed"], 7, "{seen}");
    assert_eq!(seen["total"], 7, "{seen}");
    let started = Instant::now();
    let after = until("the killed node's lease to run out", || async {
        let seen = connections(&a).await;
        seen["by_node"].get("killed").is_none().then_some(seen)
    })
    .await;
    assert!(
        started.elapsed() >= MEMBERSHIP.lease / 2,
        "gone after {:?}, before its lease of {:?}",
        started.elapsed(),
        MEMBERSHIP.lease
    );
    assert_eq!(after["total"], 0, "{after}");
    assert_eq!(after["by_node"]["node-a"], 0, "{after}");
}

crate::on_both_backends!(
    two_nodes_see_each_other,
    a_node_that_stops_beating_drops_out
);
