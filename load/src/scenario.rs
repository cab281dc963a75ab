//! Runs one scenario: users connect on a fixed schedule (`--connect-rate`), then hold
//! (`idle`, `connect`) or answer on the open-loop schedule (`answer`); the server's memory
//! is read before, under load and after the sockets close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cli::{AnswerArgs, Cli, Common, ConnectArgs, IdleArgs, Scenario};
use crate::net::Target;
use crate::stats::{AnswerReport, ClientInfo, ConnectReport, Report, ServerMemory, Stats};
use crate::token::Signer;
use crate::user::{self, Ctx, Mode, Schedule};
use crate::{commit, server, setup, table};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let report = match cli.scenario {
        Scenario::Commit(args) => {
            let report = commit::run(&args).await?;
            if cli.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.table());
            }
            return Ok(());
        }
        Scenario::Table(args) => return table::run(&args),
        Scenario::Idle(args) => idle(args).await?,
        Scenario::Connect(args) => connect(args).await?,
        Scenario::Answer(args) => answer(args).await?,
    };
    if cli.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// What a socket scenario sets up before its first connection.
struct Setup {
    ctx: Arc<Ctx>,
    pid: Option<u32>,
    client: ClientInfo,
    server: String,
    signer: Signer,
}

async fn setup(common: &Common) -> anyhow::Result<Setup> {
    let url = reqwest::Url::parse(&common.server)
        .with_context(|| format!("Failed to parse --server {}", common.server))?;
    let host = url.host_str().context("--server has no host")?.to_string();
    let port = url
        .port_or_known_default()
        .context("--server has no port")?;
    let addr: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("Failed to resolve {host}"))?
        .find(SocketAddr::is_ipv4)
        .with_context(|| format!("{host} has no IPv4 address"))?;
    let (nofile_limit, warning) = crate::net::raise_fd_limit(common.users);
    let mut warnings = Vec::new();
    if let Some(w) = warning {
        eprintln!("warning: {w}");
        warnings.push(w);
    }
    let prefix = common
        .user_prefix
        .clone()
        .unwrap_or_else(|| format!("load-{:08x}", rand::random::<u32>()));
    let pid = common.server_pid.or_else(|| server::find_by_port(port));
    if pid.is_none() {
        let w = format!("server process not found (no --server-pid, nothing visible listens on port {port}): no memory figures");
        eprintln!("warning: {w}");
        warnings.push(w);
    }
    let ctx = Arc::new(Ctx {
        target: Target {
            addr,
            ws_url: format!("ws://{host}:{port}/ws"),
            source_ips: common.source_ips,
        },
        signer: Signer::new(&common.secret),
        stats: Arc::new(Stats::new()),
        prefix: prefix.clone(),
        timeout: Duration::from_secs(common.timeout_secs.max(1)),
        test_id: String::new(),
    });
    Ok(Setup {
        ctx,
        pid,
        client: ClientInfo {
            nofile_limit,
            source_ips: common.source_ips,
            user_prefix: prefix,
            warnings,
        },
        server: common.server.clone(),
        signer: Signer::new(&common.secret),
    })
}

/// The same context with the test to start.
fn with_test(ctx: &Arc<Ctx>, test_id: String, stats: Arc<Stats>) -> Arc<Ctx> {
    Arc::new(Ctx {
        target: ctx.target.clone(),
        signer: ctx.signer.clone(),
        stats,
        prefix: ctx.prefix.clone(),
        timeout: ctx.timeout,
        test_id,
    })
}

async fn rss(pid: Option<u32>) -> Option<u64> {
    match pid {
        Some(pid) => server::median_rss_kib(pid).await,
        None => None,
    }
}

/// Starts `users` tasks connecting at `rate`; `mode(i)` says what each does after.
fn spawn_users(
    ctx: &Arc<Ctx>,
    users: usize,
    rate: f64,
    mut mode: impl FnMut(usize) -> Mode,
) -> (Instant, Vec<JoinHandle<()>>, mpsc::UnboundedReceiver<bool>) {
    let (ready_tx, ready_rx) = mpsc::unbounded_channel();
    let gap = Duration::from_secs_f64(1.0 / rate.max(0.001));
    // A short head start so the first connects are not late already.
    let t0 = Instant::now() + Duration::from_millis(50);
    let handles = (0..users)
        .map(|i| {
            tokio::spawn(user::run(
                ctx.clone(),
                i,
                t0 + gap.mul_f64(i as f64),
                mode(i),
                ready_tx.clone(),
            ))
        })
        .collect();
    (t0, handles, ready_rx)
}

/// Waits until every user has reported (connected or failed), or `deadline`.
async fn wait_ready(
    ready: &mut mpsc::UnboundedReceiver<bool>,
    users: usize,
    deadline: Instant,
) -> usize {
    let mut heard = 0;
    let mut ok = 0;
    while heard < users {
        match tokio::time::timeout_at(deadline, ready.recv()).await {
            Ok(Some(good)) => {
                heard += 1;
                ok += usize::from(good);
            }
            Ok(None) | Err(_) => break,
        }
    }
    ok
}

fn connect_deadline(users: usize, rate: f64, timeout: Duration) -> Instant {
    Instant::now() + Duration::from_secs_f64(users as f64 / rate.max(0.001)) + timeout * 2
}

fn connect_report(stats: &Stats, users: usize, rate: f64, t0: Instant) -> ConnectReport {
    let connected = Stats::count(&stats.connected);
    let secs = stats
        .last_connected()
        .saturating_duration_since(t0)
        .as_secs_f64();
    ConnectReport {
        users,
        connected,
        rate_target: rate,
        per_sec: if secs > 0.0 {
            connected as f64 / secs
        } else {
            0.0
        },
        secs,
        latency: stats.connect.summary(),
        resume: stats.resume.summary(),
        own_lag: stats.connect_lag.summary(),
    }
}

/// `sockets` 0 leaves out the per-socket figure (it means nothing while answering).
fn memory(
    pid: Option<u32>,
    before: Option<u64>,
    loaded: Option<u64>,
    after: Option<u64>,
    sockets: u64,
) -> ServerMemory {
    let kib_per_socket = match (before, loaded) {
        (Some(b), Some(l)) if sockets > 0 => Some(l.saturating_sub(b) as f64 / sockets as f64),
        _ => None,
    };
    ServerMemory {
        pid,
        rss_kib_before: before,
        rss_kib_loaded: loaded,
        rss_kib_after: after,
        kib_per_socket,
    }
}

fn errors_of(stats: &Stats) -> (std::collections::BTreeMap<String, u64>, u64) {
    let errors = stats.errors();
    let total = errors.values().sum();
    (errors, total)
}

async fn idle(args: IdleArgs) -> anyhow::Result<Report> {
    let s = setup(&args.common).await?;
    let users = args.common.users;
    let rate = args.common.connect_rate;
    let before = rss(s.pid).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (t0, handles, mut ready) = spawn_users(&s.ctx, users, rate, |_| Mode::Hold {
        expect_resume: false,
        stop: stop_rx.clone(),
    });
    wait_ready(
        &mut ready,
        users,
        connect_deadline(users, rate, s.ctx.timeout),
    )
    .await;
    // Let the server finish what the last connects started before reading its memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = rss(s.pid).await;
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let _ = stop_tx.send(true);
    futures_util::future::join_all(handles).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss(s.pid).await;
    let stats = &s.ctx.stats;
    let (errors, errors_total) = errors_of(stats);
    Ok(Report {
        scenario: "idle",
        connect: connect_report(stats, users, rate, t0),
        answers: None,
        server: memory(s.pid, before, loaded, after, Stats::count(&stats.connected)),
        errors,
        errors_total,
        client: s.client,
    })
}

async fn connect(args: ConnectArgs) -> anyhow::Result<Report> {
    let s = setup(&args.common).await?;
    let users = args.common.users;
    let rate = args.common.connect_rate;
    let stats = s.ctx.stats.clone();
    if !args.fresh {
        // Every user gets an attempt in progress first, so each measured connect loads a
        // stream and resumes it. Its errors are reported with a `prepare:` prefix.
        let test_id = setup::ensure_test(&s.server, &s.signer, args.questions).await?;
        let prepare_stats = Arc::new(Stats::new());
        let ctx = with_test(&s.ctx, test_id, prepare_stats.clone());
        let slots = Arc::new(Semaphore::new(args.prepare_concurrency.max(1)));
        let mut handles = Vec::with_capacity(users);
        for i in 0..users {
            let permit = slots.clone().acquire_owned().await?;
            let ctx = ctx.clone();
            let (tx, _rx) = mpsc::unbounded_channel();
            handles.push(tokio::spawn(async move {
                user::run(ctx, i, Instant::now(), Mode::Prepare, tx).await;
                drop(permit);
            }));
        }
        futures_util::future::join_all(handles).await;
        for (code, n) in prepare_stats.errors() {
            for _ in 0..n {
                stats.error(format!("prepare:{code}"));
            }
        }
    }
    let before = rss(s.pid).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let expect_resume = !args.fresh;
    let (t0, handles, mut ready) = spawn_users(&s.ctx, users, rate, |_| Mode::Hold {
        expect_resume,
        stop: stop_rx.clone(),
    });
    wait_ready(
        &mut ready,
        users,
        connect_deadline(users, rate, s.ctx.timeout),
    )
    .await;
    let loaded = rss(s.pid).await;
    let _ = stop_tx.send(true);
    futures_util::future::join_all(handles).await;
    let after = rss(s.pid).await;
    let (errors, errors_total) = errors_of(&stats);
    Ok(Report {
        scenario: "connect",
        connect: connect_report(&stats, users, rate, t0),
        answers: None,
        server: memory(s.pid, before, loaded, after, Stats::count(&stats.connected)),
        errors,
        errors_total,
        client: s.client,
    })
}

async fn answer(args: AnswerArgs) -> anyhow::Result<Report> {
    let mut s = setup(&args.common).await?;
    let users = args.common.users.max(1);
    let rate = args.common.connect_rate;
    let test_id = setup::ensure_test(&s.server, &s.signer, args.questions).await?;
    let ctx = with_test(&s.ctx, test_id, s.ctx.stats.clone());
    let stats = ctx.stats.clone();
    let before = rss(s.pid).await;
    let (schedule_tx, schedule_rx) = watch::channel(None);
    let (t0, handles, mut ready) = spawn_users(&ctx, users, rate, |_| Mode::Answer {
        schedule: schedule_rx.clone(),
    });
    wait_ready(
        &mut ready,
        users,
        connect_deadline(users, rate, ctx.timeout),
    )
    .await;
    let answer_rate = args.rate.max(0.001);
    let begin = Instant::now() + Duration::from_millis(100);
    let window_start = begin + Duration::from_secs_f64(args.warmup_secs.max(0.0));
    let window_end = window_start + Duration::from_secs_f64(args.duration_secs.max(0.001));
    let plan = Schedule {
        begin,
        window_start,
        window_end,
        interval: Duration::from_secs_f64(users as f64 / answer_rate),
        stagger: Duration::from_secs_f64(1.0 / answer_rate),
    };
    if plan.interval < Duration::from_millis(50) {
        let w = format!(
            "each user owes an answer every {:.1} ms: over the server's default budget of 20 messages/s per user, so the server must run with a larger ASSESSD_RATE_PER_SEC (benches/run.sh sets 1000), or use more users",
            plan.interval.as_secs_f64() * 1000.0
        );
        eprintln!("warning: {w}");
        s.client.warnings.push(w);
    }
    let _ = schedule_tx.send(Some(plan));
    // The server's memory under load, read at the end of the window.
    let pid = s.pid;
    let loaded = tokio::spawn(async move {
        tokio::time::sleep_until(window_end).await;
        pid.and_then(server::rss_kib)
    });
    futures_util::future::join_all(handles).await;
    let loaded = loaded.await.ok().flatten();
    let after = rss(s.pid).await;
    let (errors, errors_total) = errors_of(&stats);
    let window_secs = (window_end - window_start).as_secs_f64();
    Ok(Report {
        scenario: "answer",
        connect: connect_report(&stats, users, rate, t0),
        answers: Some(AnswerReport {
            rate_target: args.rate,
            window_secs,
            due: Stats::count(&stats.answers_due),
            done: Stats::count(&stats.answers_done),
            per_sec: Stats::count(&stats.feedback_in_window) as f64 / window_secs,
            latency: stats.answer.summary(),
            service: stats.answer_service.summary(),
            own_lag: stats.answer_lag.summary(),
            answers_total: Stats::count(&stats.answers_total),
            attempts_started: Stats::count(&stats.attempts_started),
            attempts_completed: Stats::count(&stats.attempts_completed),
        }),
        server: memory(s.pid, before, loaded, after, 0),
        errors,
        errors_total,
        client: s.client,
    })
}
