//! # assessd-load
//!
//! A load generator for assessd, kept out of the server's crate so the server never links a
//! WebSocket client or histograms. Every simulated user is a real WebSocket speaking the
//! protocol (docs/protocol.md): it connects with its own token, starts an attempt of a
//! test, answers the questions as they are presented, and starts again when an attempt
//! completes.
//!
//! ## Layout
//! - [`cli`]: the scenarios (`idle`, `connect`, `answer`, `commit`, `table`) and their
//!   options.
//! - [`scenario`]: runs one scenario: the connect schedule, the answer schedule, the
//!   server's memory before and after, the report.
//! - [`user`]: one simulated user on its socket (the open-loop answer queue).
//! - [`net`]: sockets from spread source addresses, the file-descriptor limit.
//! - [`token`]: signing tokens with the server's HS256 secret.
//! - [`setup`]: the load test's definition, put through the admin API.
//! - [`server`]: the server's resident memory from `/proc`, by pid or by listening port.
//! - [`stats`]: histograms and counters, and the report as a table or JSON.
//! - [`commit`]: the store's own INSERT+COMMIT rate, the yardstick for answers/s.
//! - [`table`]: the one table of `benches/run.sh`, from its results file.
#![forbid(unsafe_code)]

mod cli;
mod commit;
mod net;
mod scenario;
mod server;
mod setup;
mod stats;
mod table;
mod token;
mod user;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = cli.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = runtime.build()?;
    runtime.block_on(scenario::run(cli))
}
