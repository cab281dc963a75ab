//! Memory per idle WebSocket connection: starts the real `assessd` binary, opens N
//! connections of N different users (each reads CONNECTED), and prints the server's
//! resident memory before and after, as the median of several samples.
//!
//! `cargo bench --bench idle_connections` (N from `BENCH_CONNECTIONS`, default 5000; one
//! process may hold at most 20,000 file descriptors here, so keep N under that).

use std::process::Stdio;
use std::time::{Duration, Instant};

use assessd::auth::{JwtKeys, Role, Secret};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "benchmark-secret-0123456789abcdef";

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn median_rss(pid: u32) -> u64 {
    let mut samples = Vec::new();
    for _ in 0..5 {
        samples.push(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    samples.sort_unstable();
    samples[samples.len() / 2]
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let dir = tempfile::tempdir().unwrap();
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_assessd"))
        .env("ASSESSD_BIND", "127.0.0.1:0")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("bench.db").display()),
        )
        .env("ASSESSD_JWT_SECRET", SECRET)
        .env("ASSESSD_MAX_CONNECTIONS", "20000")
        .env("ASSESSD_IDLE_TIMEOUT_SECS", "600")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start assessd");
    let pid = server.id().expect("pid");
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next_line().await.unwrap().expect("assessd listens");
        if let Some(a) = line.strip_prefix("assessd listening on http://") {
            break a.to_string();
        }
    };
    let keys = JwtKeys::hs256(&Secret::new(SECRET), None, None);
    let connect = |i: usize| {
        let token = keys
            .mint(
                &format!("bench{i}"),
                &[Role::Taker],
                Duration::from_secs(3600),
            )
            .unwrap();
        let addr = addr.clone();
        async move {
            let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            let (mut socket, _) = tokio_tungstenite::connect_async(request)
                .await
                .expect("connect");
            let _connected = socket.next().await.expect("CONNECTED").expect("frame");
            socket
        }
    };
    // Warm up: one connection, so one-off allocations are in the baseline.
    let warm = connect(usize::MAX).await;
    let before = median_rss(pid).await;
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
        let opened = futures_util::future::join_all(chunk.iter().map(|i| connect(*i))).await;
        sockets.extend(opened);
    }
    let took = started.elapsed();
    let after = median_rss(pid).await;
    let per_connection = (after.saturating_sub(before)) as f64 / n as f64;
    println!(
        "idle_connections: {n} connections opened in {took:.2?} ({:.0}/s)",
        n as f64 / took.as_secs_f64()
    );
    println!("idle_connections: server RSS median {before} KiB before, {after} KiB after");
    println!("idle_connections: {per_connection:.1} KiB per idle connection");
    drop(sockets);
    drop(warm);
    server.kill().await.ok();
}
