//! The subcommands: `serve` (the default), `migrate`, `token`, `tests import`,
//! `projections rebuild`, `dev seed`. Each says on
//! stderr which database and which secret it uses, and warns when it has just created one,
//! so that running it from another directory cannot silently start from scratch. Stdout
//! carries only the result, for scripts.

use std::future::Future;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::auth::{resolve_secret, JwtKeys, Secret, SecretSource};
use crate::config::{
    default_node_id, Cli, Command, DevCommand, ImportArgs, KeyArgs, ProjectionsCommand,
    RebuildArgs, SeedArgs, ServeArgs, Settings, TestsCommand,
};
use crate::store::catalog::Catalog;
use crate::store::{absolute, Database, Location};
use crate::Application;

/// Connections the one-shot commands need.
const TOOL_POOL: u32 = 2;

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => serve(cli.serve, shutdown_signal()).await,
        Some(Command::Serve(args)) => serve(args, shutdown_signal()).await,
        Some(Command::Migrate(args)) => {
            let db = open_database(&args.database_url).await?;
            db.migrate().await?;
            println!("migrations applied ({})", db.backend());
            db.close().await;
            Ok(())
        }
        Some(Command::Token(token)) => {
            if token.keys.jwt_public_key.is_some() {
                anyhow::bail!("with ASSESSD_JWT_PUBLIC_KEY, tokens come from your identity provider; assessd cannot sign them");
            }
            let (secret, source) = secret_of(&token.keys, &token.database_url)?;
            report_secret(&source);
            let keys = JwtKeys::hs256(
                &secret,
                token.keys.jwt_issuer.clone(),
                token.keys.jwt_audience.clone(),
            );
            println!("{}", keys.mint(&token.sub, &token.role, token.ttl)?);
            Ok(())
        }
        Some(Command::Tests(TestsCommand::Import(args))) => import(args).await,
        Some(Command::Projections(ProjectionsCommand::Rebuild(args))) => rebuild(args).await,
        Some(Command::Dev(DevCommand::Seed(args))) => seed(args).await,
    }
}

/// `projections rebuild`: each read model rebuilt beside the live one and swapped in, as the
/// admin API does it, so a server may keep running meanwhile.
async fn rebuild(args: RebuildArgs) -> anyhow::Result<()> {
    let known = projections::runner::ALL;
    let names: Vec<&str> = match (&args.name, args.all) {
        (_, true) => known.to_vec(),
        (Some(name), false) => match known.iter().find(|k| **k == name.as_str()) {
            Some(name) => vec![*name],
            None => anyhow::bail!(
                "no read model named {name:?}; the read models are: {}",
                known.join(", ")
            ),
        },
        (None, false) => anyhow::bail!("name a read model, or pass --all"),
    };
    let db = open_database(&args.database.database_url).await?;
    db.migrate().await?;
    // The swap moves the checkpoint row; without one (a database no server has run on) it
    // would move nothing, and a server would later apply every event again on top.
    let read_models = projections::Projections::new(db.for_projections());
    read_models
        .prepare()
        .await
        .context("Failed to prepare the read models")?;
    // One pass over the history for all of them.
    let label = names.join(", ");
    let bar = progress_bar(&label, "events");
    let report = projections::rebuild::rebuild_many(&read_models.db(), &names, |progress| {
        bar.set_length(progress.events_total);
        bar.set_position(progress.events_done);
    })
    .await
    .with_context(|| format!("Failed to rebuild {label}; the live read models are unchanged"))?;
    bar.finish_and_clear();
    for name in &names {
        println!(
            "rebuilt {name}: {} events in {} ({} events/s)",
            report.events,
            seconds(report.took),
            per_second(report.events, report.took)
        );
    }
    db.close().await;
    Ok(())
}

/// `dev seed`: synthetic attempts through the server's command path ([`crate::dev`]).
async fn seed(args: SeedArgs) -> anyhow::Result<()> {
    let url = &args.database.database_url;
    let location = Location::of(url)?;
    eprintln!("database: {location}");
    let new_file = new_sqlite_file(&location);
    // The server's own state, so the commands take exactly its path. No listener is bound
    // and nothing is signed or verified: the address and the secret are placeholders.
    let settings = Settings::new(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        url.clone(),
        Secret::ephemeral(),
    );
    let state = crate::app::state(&settings).await?;
    if let Some(file) = new_file {
        eprintln!("warning: {}", created_database(&file));
    }
    let plan = crate::dev::Plan {
        attempts: args.attempts,
        users: args.users,
        concurrency: args.concurrency,
        test_id: args.test.clone(),
    };
    let bar = progress_bar("seed", "attempts");
    bar.set_length(plan.attempts);
    let plain = bar.is_hidden();
    let shown = bar.clone();
    let outcome = crate::dev::seed(&state, &plan, move |progress| {
        shown.set_position(progress.attempts_done);
        // Without a terminal, a line at every tenth of the way.
        let tenth = |n: u64| n * 10 / progress.attempts_total.max(1);
        if plain && tenth(progress.attempts_done) > tenth(progress.attempts_done.saturating_sub(1))
        {
            eprintln!(
                "seeded {} of {} attempts ({} events)",
                progress.attempts_done, progress.attempts_total, progress.events_written
            );
        }
    })
    .await;
    bar.finish_and_clear();
    state.db.close().await;
    let report = outcome?;
    println!(
        "seeded {} attempts of {} v{} by {} users ({} to {}): {} events in {} ({} events/s)",
        report.attempts,
        report.test_id,
        report.test_version,
        report.users,
        report.first_user,
        report.last_user,
        report.events,
        seconds(report.took),
        per_second(report.events, report.took)
    );
    eprintln!(
        "the read models catch up when a server next runs, or now with `assessd projections rebuild --all`"
    );
    Ok(())
}

/// A progress bar on stderr when it is a terminal; a hidden one otherwise, so that logs and
/// pipes get only the final line.
fn progress_bar(prefix: &str, unit: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(&format!(
        "{{prefix}} [{{elapsed_precise}}] {{wide_bar}} {{human_pos}}/{{human_len}} {unit} ({{per_sec:0}}, ETA {{eta}})"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
        .with_style(style)
        .with_prefix(prefix.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// `1.23 s`.
fn seconds(took: Duration) -> String {
    format!("{:.2} s", took.as_secs_f64())
}

/// `count / took` per second, rounded, with thousands separators: `100,234`.
fn per_second(count: u64, took: Duration) -> String {
    let rate = count as f64 / took.as_secs_f64().max(1e-9);
    thousands(rate.round() as u64)
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let file = &args.file;
    let bytes =
        std::fs::read(file).with_context(|| format!("Failed to read {}", file.display()))?;
    let id = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(String::from))
        .or_else(|| file.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let definition = crate::definitions::parse(&bytes, Some(&id))
        .map_err(|e| anyhow::anyhow!("{} is not a valid test definition: {e}", file.display()))?;
    let db = open_database(&args.database.database_url).await?;
    db.migrate().await?;
    let stored = Catalog::new(db.clone()).put(definition).await?;
    if stored.created {
        println!("imported test {id:?} as version {}", stored.version);
    } else {
        println!("test {id:?} is unchanged (version {})", stored.version);
    }
    db.close().await;
    Ok(())
}

/// Opens the database of a one-shot command, saying on stderr which one it is and warning
/// when the SQLite file did not exist before.
async fn open_database(url: &str) -> anyhow::Result<Database> {
    let location = Location::of(url)?;
    eprintln!("database: {location}");
    let new_file = new_sqlite_file(&location);
    let db = Database::connect(url, TOOL_POOL).await?;
    if let Some(file) = new_file {
        eprintln!("warning: {}", created_database(&file));
    }
    Ok(db)
}

/// The SQLite file `location` names, when it does not exist yet (connecting will create it).
/// Says which AI profiles the tutor uses (names, servers and models; never a key).
fn log_ai(config: &crate::ai::AiConfig) {
    if config.is_offline() {
        tracing::info!("no AI provider configured: the tutor is offline");
        return;
    }
    for profile in config.default.iter().chain(config.profiles.values()) {
        tracing::info!(
            profile = %profile.name,
            base_url = %profile.base_url,
            model = %profile.model,
            key = if profile.api_key.is_some() { "set" } else { "none" },
            "AI provider profile"
        );
    }
}

fn new_sqlite_file(location: &Location) -> Option<PathBuf> {
    location
        .sqlite_file()
        .filter(|file| !file.exists())
        .map(absolute)
}

fn created_database(file: &Path) -> String {
    format!(
        "created a new, empty SQLite database at {}; to use an existing one, set DATABASE_URL to its path",
        file.display()
    )
}

fn secret_of(keys: &KeyArgs, database_url: &str) -> anyhow::Result<(Secret, SecretSource)> {
    let data_dir = keys.data_dir(database_url)?;
    resolve_secret(keys.jwt_secret.clone().map(Secret::new), &data_dir)
}

/// Says on stderr which secret a one-shot command uses, and warns when it is new.
fn report_secret(source: &SecretSource) {
    match source {
        SecretSource::Configured => {
            eprintln!("secret: ASSESSD_JWT_SECRET (from the environment or --jwt-secret)");
        }
        SecretSource::DevelopmentFile { path, created } => {
            eprintln!("secret: the development secret in {}", path.display());
            if *created {
                eprintln!("warning: {}", created_secret(path));
            }
        }
    }
}

fn created_secret(path: &Path) -> String {
    format!(
        "created a new development secret at {}; tokens it signs are accepted only by a server using the same secret",
        path.display()
    )
}

/// Builds the server from `args` and runs it until `shutdown`.
pub async fn serve(
    args: ServeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let database_url = args.database.database_url.clone();
    let location = Location::of(&database_url)?;
    let public_key = args
        .keys
        .jwt_public_key
        .as_ref()
        .map(|path| {
            std::fs::read(path).with_context(|| format!("Failed to read {}", path.display()))
        })
        .transpose()?;
    // Only the generated development secret lets the server mint tokens for the pages.
    let mut dev_sign_in = false;
    let secret = if let Some(path) = &args.keys.jwt_public_key {
        tracing::info!(
            path = %absolute(path).display(),
            "tokens are verified with this public key; no secret is used"
        );
        // Settings wants a secret even though nothing signs or verifies with this one.
        Secret::ephemeral()
    } else {
        let (secret, source) = secret_of(&args.keys, &database_url)?;
        match &source {
            SecretSource::Configured => {
                tracing::info!("tokens are verified with ASSESSD_JWT_SECRET");
            }
            SecretSource::DevelopmentFile { path, created } => {
                tracing::warn!(
                    path = %path.display(),
                    "ASSESSD_JWT_SECRET is not set: tokens are verified with the development secret in this file"
                );
                if *created {
                    tracing::warn!("{}", created_secret(path));
                }
                // Anyone who reaches the server could mint an admin token: only on a
                // loopback address, where that is the machine's own user.
                if args.bind.ip().is_loopback() {
                    tracing::warn!(
                        "development sign-in is on: the pages at / ask this server to mint tokens for any name"
                    );
                    dev_sign_in = true;
                } else {
                    tracing::warn!(
                        bind = %args.bind,
                        "development sign-in is off: this address is not loopback; set ASSESSD_JWT_SECRET and hand tokens to the pages"
                    );
                }
            }
        }
        secret
    };
    tracing::info!(database = %location, "opening the database");
    let new_file = new_sqlite_file(&location);
    let mut settings = Settings::new(args.bind, database_url, secret);
    settings.jwt_public_key = public_key;
    settings.dev_sign_in = dev_sign_in;
    settings.jwt_issuer = args.keys.jwt_issuer.clone();
    settings.jwt_audience = args.keys.jwt_audience.clone();
    settings.node_id = args.node_id.clone().unwrap_or_else(default_node_id);
    settings.limits = args.limits();
    settings.db_pool = args.db_pool;
    settings.snapshot_every = args.snapshot_every;
    settings.shutdown_grace = std::time::Duration::from_secs(args.shutdown_grace_secs);
    settings.ai = args
        .ai
        .config()
        .context("Failed to read the AI provider configuration")?;
    log_ai(&settings.ai);
    let app = Application::build(settings).await?;
    if let Some(file) = new_file {
        tracing::warn!("{}", created_database(&file));
    }
    let addr = app.local_addr()?;
    tracing::info!(%addr, database = app.state().db.backend(), "assessd listening");
    // A plain line on stdout, for scripts that start assessd on port 0.
    println!("assessd listening on http://{addr}");
    app.run_until(shutdown).await
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "failed to listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "failed to listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown requested; finishing in-flight commands");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_with_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(100_234), "100,234");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(per_second(10, Duration::from_millis(500)), "20");
    }
}
