//! The subcommands: `serve` (the default), `migrate`, `token`, `tests import`.

use std::future::Future;

use anyhow::Context;

use crate::auth::{resolve_secret, JwtKeys, Secret, SecretSource};
use crate::config::{
    default_node_id, Cli, Command, ImportArgs, KeyArgs, ServeArgs, Settings, TestsCommand,
};
use crate::store::catalog::Catalog;
use crate::store::Database;
use crate::Application;

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => serve(cli.serve, shutdown_signal()).await,
        Some(Command::Serve(args)) => serve(args, shutdown_signal()).await,
        Some(Command::Migrate(args)) => {
            let db = Database::connect(&args.database_url, 2).await?;
            db.migrate().await?;
            println!("migrations applied ({})", db.backend());
            Ok(())
        }
        Some(Command::Token(token)) => {
            if token.keys.jwt_public_key.is_some() {
                anyhow::bail!("with ASSESSD_JWT_PUBLIC_KEY, tokens come from your identity provider; assessd cannot sign them");
            }
            let (secret, _) = secret_of(&token.keys, &token.database_url)?;
            let keys = JwtKeys::hs256(
                &secret,
                token.keys.jwt_issuer.clone(),
                token.keys.jwt_audience.clone(),
            );
            println!("{}", keys.mint(&token.sub, &token.role, token.ttl)?);
            Ok(())
        }
        Some(Command::Tests(TestsCommand::Import(args))) => import(args).await,
    }
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
    let db = Database::connect(&args.database.database_url, 2).await?;
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

fn secret_of(keys: &KeyArgs, database_url: &str) -> anyhow::Result<(Secret, SecretSource)> {
    let data_dir = keys.data_dir(database_url)?;
    resolve_secret(keys.jwt_secret.clone().map(Secret::new), &data_dir)
}

/// Builds the server from `args` and runs it until `shutdown`.
pub async fn serve(
    args: ServeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (secret, source) = secret_of(&args.keys, &args.database.database_url)?;
    let public_key = args
        .keys
        .jwt_public_key
        .as_ref()
        .map(|path| {
            std::fs::read(path).with_context(|| format!("Failed to read {}", path.display()))
        })
        .transpose()?;
    if let (SecretSource::DevelopmentFile { path, .. }, None) = (&source, &public_key) {
        tracing::warn!(
            path = %path.display(),
            "ASSESSD_JWT_SECRET is not set: using the generated development secret kept in the data directory"
        );
    }
    let mut settings = Settings::new(args.bind, args.database.database_url.clone(), secret);
    settings.jwt_public_key = public_key;
    settings.jwt_issuer = args.keys.jwt_issuer.clone();
    settings.jwt_audience = args.keys.jwt_audience.clone();
    settings.node_id = args.node_id.clone().unwrap_or_else(default_node_id);
    settings.limits = args.limits();
    settings.db_pool = args.db_pool;
    settings.snapshot_every = args.snapshot_every;
    settings.shutdown_grace = std::time::Duration::from_secs(args.shutdown_grace_secs);
    let app = Application::build(settings).await?;
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
