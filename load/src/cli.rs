//! The command line: one subcommand per scenario, the options every socket scenario shares.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "assessd-load",
    version,
    about = "Load generator for assessd: real WebSockets, open-loop answers, latency histograms"
)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
    /// Worker threads of the generator's runtime (default: one per core).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Print one JSON object instead of the table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Hold N authenticated sockets open and report the server's memory per socket.
    Idle(IdleArgs),
    /// Open N connections at a given rate (users with an attempt in progress, so each
    /// connect loads a stream and resumes) and report connect-to-CONNECTED latency.
    Connect(ConnectArgs),
    /// N users answer at a given total rate in open loop, for a duration.
    Answer(AnswerArgs),
    /// The store's own limit: single-row INSERT+COMMIT transactions at a concurrency.
    Commit(CommitArgs),
    /// Print benches/run.sh's table from its results file.
    Table(TableArgs),
}

/// What every socket scenario needs: where the server is, how to sign, how many users.
#[derive(Debug, Args)]
pub struct Common {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// The server's HS256 secret (the same variable the server reads).
    #[arg(long, env = "ASSESSD_JWT_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Simulated users, each with one WebSocket.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub users: usize,
    /// New connections per second.
    #[arg(long, default_value_t = 1000.0)]
    pub connect_rate: f64,
    /// Spread source addresses over 127.0.0.1 .. 127.0.0.K (one address has about 28k
    /// ephemeral ports); 0 lets the kernel choose. Only for a server on 127.0.0.0/8.
    #[arg(long, default_value_t = 16)]
    pub source_ips: u8,
    /// The server's process id, for its memory (default: the process listening on the
    /// server's port, when it can be found in /proc).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Users are `<prefix>-<i>`; the default is fresh for every run.
    #[arg(long)]
    pub user_prefix: Option<String>,
    /// Give up on a connection (or an answer, when draining) after this many seconds.
    #[arg(long, default_value_t = 10)]
    pub timeout_secs: u64,
}

#[derive(Debug, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    /// Seconds to hold the sockets once all are connected.
    #[arg(long, default_value_t = 3)]
    pub hold_secs: u64,
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connect users without a stream (no attempt to resume).
    #[arg(long)]
    pub fresh: bool,
    /// Questions of the load test (when preparing attempts to resume).
    #[arg(long, default_value_t = 20)]
    pub questions: usize,
    /// Attempts started at once while preparing.
    #[arg(long, default_value_t = 64)]
    pub prepare_concurrency: usize,
}

#[derive(Debug, Args)]
pub struct AnswerArgs {
    #[command(flatten)]
    pub common: Common,
    /// Answers per second, all users together, due on a fixed schedule.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of measured answering.
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Seconds of answering before the measurement starts (not counted).
    #[arg(long, default_value_t = 1.0)]
    pub warmup_secs: f64,
    /// Questions of the load test; an attempt restarts when all are answered.
    #[arg(long, default_value_t = 20)]
    pub questions: usize,
}

#[derive(Debug, Args)]
pub struct CommitArgs {
    /// `sqlite://PATH` (a new file) or `postgres://...` (a table of its own, dropped after).
    #[arg(long)]
    pub database_url: String,
    /// Connections committing at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 5.0)]
    pub duration_secs: f64,
}

#[derive(Debug, Args)]
pub struct TableArgs {
    /// Lines of `store<TAB>label<TAB>report JSON`, as benches/run.sh writes them.
    pub results: PathBuf,
    /// The mode benches/run.sh ran in, printed under the table.
    #[arg(long, default_value = "default")]
    pub mode: String,
    /// The server's database pool (the commit probe's concurrency to compare with).
    #[arg(long, default_value_t = 16)]
    pub pool: usize,
}
