//! Configuration: the command line and environment (clap), and the typed [`Settings`] an
//! [`crate::Application`] is built from. Tests build `Settings` directly. Every default is
//! written once, in [`defaults`], and used by the flags, [`Limits::default`] and
//! [`Settings::new`] alike.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::auth::{Role, Secret};

/// The default of every option.
pub mod defaults {
    pub const BIND: &str = "127.0.0.1:8080";
    pub const DATABASE_URL: &str = "sqlite://assessd.db";
    pub const MAX_CONNECTIONS: usize = 10_000;
    pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
    pub const IDLE_TIMEOUT_SECS: u64 = 60;
    pub const PING_INTERVAL_SECS: u64 = 20;
    pub const WRITE_TIMEOUT_SECS: u64 = 10;
    pub const RATE_PER_SEC: u32 = 20;
    pub const RATE_BURST: u32 = 40;
    pub const OUTBOUND_QUEUE: usize = 64;
    pub const DB_POOL: u32 = 16;
    pub const SNAPSHOT_EVERY: usize = 20;
    pub const SHUTDOWN_GRACE_SECS: u64 = 10;
    /// How often a node records that it is alive, and after how long without a heartbeat
    /// the others count it gone.
    pub const HEARTBEAT_MS: u64 = 2_000;
    pub const NODE_LEASE_MS: u64 = 10_000;
    /// `dev seed`: users seeding at once.
    pub const SEED_CONCURRENCY: u32 = 16;
    /// `dev seed`: the test taken.
    pub const SEED_TEST: &str = "demo";
}

#[derive(Debug, Parser)]
#[command(
    name = "assessd",
    version,
    about = "Event-sourced assessment server",
    // The server options are accepted before no subcommand at all (plain `assessd` serves),
    // but do not leak into the help and the parsing of the other subcommands.
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `serve`, which runs when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "ASSESSD_LOG_JSON", global = true)]
    pub log_json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the WebSocket protocol and the HTTP API (the default).
    Serve(ServeArgs),
    /// Apply pending database migrations and exit.
    Migrate(DatabaseArgs),
    /// Mint a token signed with the configured key, for development and scripts.
    Token(TokenArgs),
    /// Manage test definitions.
    #[command(subcommand)]
    Tests(TestsCommand),
    /// Manage the read models.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Development tools.
    #[command(subcommand)]
    Dev(DevCommand),
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Rebuild read models from the first event, beside the live ones, and swap them in.
    Rebuild(RebuildArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["name", "all"])))]
pub struct RebuildArgs {
    /// The read model to rebuild, such as `assessments`.
    pub name: Option<String>,
    /// Rebuild every read model, one after the other.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Record synthetic attempts through the server's command path (for benchmarks).
    Seed(SeedArgs),
}

#[derive(Debug, Args)]
pub struct SeedArgs {
    /// Attempts to record, each started and answered to completion.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub attempts: u64,
    /// Users taking them, each up to the test's `max_attempts` [default: attempts divided
    /// by max_attempts, rounded up].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub users: Option<u64>,
    /// Users seeding at once (1 to 1024); they share the server's pool of database
    /// connections.
    #[arg(long, default_value_t = defaults::SEED_CONCURRENCY, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// The test taken (its latest version).
    #[arg(long, default_value = defaults::SEED_TEST)]
    pub test: String,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Subcommand)]
pub enum TestsCommand {
    /// Validate a test definition (JSON) and store it as a new version.
    Import(ImportArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The JSON file; its `id` field, or else its file name, is the test id.
    pub file: PathBuf,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// The database of `migrate`, `tests import`, `projections rebuild` and `dev seed`.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// `sqlite://PATH` (created on first run) or `postgres://...`.
    #[arg(long, env = "DATABASE_URL", default_value = defaults::DATABASE_URL)]
    pub database_url: String,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user id (the `sub` claim).
    #[arg(long)]
    pub sub: String,
    /// Role(s) of the token; repeat for several.
    #[arg(long, value_enum, default_values_t = [Role::Taker])]
    pub role: Vec<Role>,
    /// How long the token is valid, e.g. `30m`, `1h`, `7d`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// The server's database; the development secret is kept beside a SQLite file, so
    /// `token` finds the one the server uses. No database is opened.
    #[arg(long, env = "DATABASE_URL", default_value = defaults::DATABASE_URL)]
    pub database_url: String,
}

/// How tokens are signed and verified; shared by `serve` and `token`.
#[derive(Debug, Clone, Args)]
pub struct KeyArgs {
    /// HS256 signing secret. When unset, a development secret is generated and kept in the
    /// data directory.
    #[arg(long, env = "ASSESSD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// A PEM file with an identity provider's RSA or Ed25519 public key: tokens are then
    /// verified as RS256 or EdDSA (and no longer HS256).
    #[arg(long, env = "ASSESSD_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// Required `iss` claim, when set.
    #[arg(long, env = "ASSESSD_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set.
    #[arg(long, env = "ASSESSD_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Where the development secret is kept [default: the directory of the SQLite
    /// database file; `.` with PostgreSQL].
    #[arg(long, env = "ASSESSD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

impl KeyArgs {
    /// The data directory: the configured one, else the one the database URL implies.
    ///
    /// # Errors
    /// When it depends on a database URL that cannot be read.
    pub fn data_dir(&self, database_url: &str) -> anyhow::Result<PathBuf> {
        match &self.data_dir {
            Some(dir) => Ok(dir.clone()),
            None => default_data_dir(database_url),
        }
    }
}

/// The directory of the SQLite database file, so that the development secret sits beside
/// the data it protects (and is found again from any working directory); `.` for
/// PostgreSQL and in-memory SQLite.
///
/// # Errors
/// When `database_url` is neither a SQLite nor a PostgreSQL URL.
pub fn default_data_dir(database_url: &str) -> anyhow::Result<PathBuf> {
    let location = crate::store::Location::of(database_url)?;
    Ok(location
        .sqlite_file()
        .and_then(Path::parent)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf))
}

/// Server options; every one has a flag and an environment variable.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, env = "ASSESSD_BIND", default_value = defaults::BIND)]
    pub bind: SocketAddr,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// This node's name, recorded in event metadata.
    #[arg(long, env = "ASSESSD_NODE_ID")]
    pub node_id: Option<String>,
    /// Most WebSocket connections at once; more are refused with 503.
    #[arg(long, env = "ASSESSD_MAX_CONNECTIONS", default_value_t = defaults::MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Largest accepted WebSocket message, in bytes; larger ones close with 1009.
    #[arg(long, env = "ASSESSD_MAX_MESSAGE_BYTES", default_value_t = defaults::MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// Seconds without any message or pong before a connection is closed with 4008.
    #[arg(long, env = "ASSESSD_IDLE_TIMEOUT_SECS", default_value_t = defaults::IDLE_TIMEOUT_SECS)]
    pub idle_timeout_secs: u64,
    /// Seconds between server pings.
    #[arg(long, env = "ASSESSD_PING_INTERVAL_SECS", default_value_t = defaults::PING_INTERVAL_SECS)]
    pub ping_interval_secs: u64,
    /// Seconds a client's socket may accept no write before it is disconnected.
    #[arg(long, env = "ASSESSD_WRITE_TIMEOUT_SECS", default_value_t = defaults::WRITE_TIMEOUT_SECS)]
    pub write_timeout_secs: u64,
    /// Messages per second each user may send.
    #[arg(long, env = "ASSESSD_RATE_PER_SEC", default_value_t = defaults::RATE_PER_SEC)]
    pub rate_per_sec: u32,
    /// Burst of messages each user may send at once.
    #[arg(long, env = "ASSESSD_RATE_BURST", default_value_t = defaults::RATE_BURST)]
    pub rate_burst: u32,
    /// Replies queued for one client; while the queue is full the server stops reading it.
    #[arg(long, env = "ASSESSD_OUTBOUND_QUEUE", default_value_t = defaults::OUTBOUND_QUEUE)]
    pub outbound_queue: usize,
    /// Database connections in the pool.
    #[arg(long, env = "ASSESSD_DB_POOL", default_value_t = defaults::DB_POOL)]
    pub db_pool: u32,
    /// A snapshot of a user's state is written every this many events.
    #[arg(long, env = "ASSESSD_SNAPSHOT_EVERY", default_value_t = defaults::SNAPSHOT_EVERY)]
    pub snapshot_every: usize,
    /// Seconds to let in-flight commands finish on shutdown.
    #[arg(long, env = "ASSESSD_SHUTDOWN_GRACE_SECS", default_value_t = defaults::SHUTDOWN_GRACE_SECS)]
    pub shutdown_grace_secs: u64,
    #[command(flatten)]
    pub ai: AiArgs,
}

/// The AI provider (src/ai/). With neither `OPENAI_API_KEY` nor `OPENAI_BASE_URL` nor named
/// profiles the tutor is offline. A named profile's own settings are read from
/// `ASSESSD_AI_PROFILE_<NAME>_API_KEY`, `_BASE_URL` and `_MODEL`.
#[derive(Debug, Clone, Args)]
pub struct AiArgs {
    /// API key of the default AI profile.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<String>,
    /// Base URL of an OpenAI-compatible API for the default profile, e.g.
    /// `http://127.0.0.1:11434/v1` [default with a key: https://api.openai.com/v1].
    #[arg(long, env = "OPENAI_BASE_URL")]
    pub openai_base_url: Option<String>,
    /// The model every profile asks unless its own `_MODEL` says otherwise.
    #[arg(long, env = "ASSESSD_AI_MODEL", default_value = crate::ai::config::defaults::MODEL)]
    pub ai_model: String,
    /// Named AI profiles, comma-separated (e.g. `course-a,course-b`); a test definition
    /// picks one with `ai.profile`.
    #[arg(long, env = "ASSESSD_AI_PROFILES")]
    pub ai_profiles: Option<String>,
    /// Seconds one model call may take, retries included.
    #[arg(long, env = "ASSESSD_AI_TIMEOUT_SECS", default_value_t = crate::ai::config::defaults::TIMEOUT_SECS)]
    pub ai_timeout_secs: u64,
    /// Retries of a model call answered with 429 or 5xx.
    #[arg(long, env = "ASSESSD_AI_RETRIES", default_value_t = crate::ai::config::defaults::RETRIES)]
    pub ai_retries: u32,
    /// Model calls in flight at once on this node.
    #[arg(long, env = "ASSESSD_AI_MAX_CONCURRENT", default_value_t = crate::ai::config::defaults::MAX_CONCURRENT)]
    pub ai_max_concurrent: usize,
    /// Model calls in flight at once for one user.
    #[arg(long, env = "ASSESSD_AI_MAX_PER_USER", default_value_t = crate::ai::config::defaults::MAX_PER_USER)]
    pub ai_max_per_user: usize,
}

impl AiArgs {
    /// The AI configuration, named profiles read from the process environment.
    ///
    /// # Errors
    /// A [`crate::ai::config::AiConfigError`] naming the variable at fault.
    pub fn config(&self) -> Result<crate::ai::AiConfig, crate::ai::config::AiConfigError> {
        let sources = crate::ai::config::AiSources {
            api_key: self.openai_api_key.clone(),
            base_url: self.openai_base_url.clone(),
            model: Some(self.ai_model.clone()),
            profiles: self.ai_profiles.clone(),
        };
        let mut config = crate::ai::config::profiles_from(&sources, |k| std::env::var(k).ok())?;
        config.timeout = Duration::from_secs(self.ai_timeout_secs.max(1));
        config.retries = self.ai_retries;
        config.max_concurrent = self.ai_max_concurrent.max(1);
        config.max_per_user = self.ai_max_per_user.max(1);
        Ok(config)
    }
}

/// Everything an [`crate::Application`] needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bind: SocketAddr,
    pub database_url: String,
    pub jwt_secret: Secret,
    /// PEM of a public key; when set, tokens are verified with it instead of the secret.
    pub jwt_public_key: Option<Vec<u8>>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub node_id: String,
    pub limits: Limits,
    pub db_pool: u32,
    pub snapshot_every: usize,
    pub shutdown_grace: Duration,
    /// The node's heartbeat ([`crate::nodes`]).
    pub membership: Membership,
    /// Load the demo test when it is not in the catalog yet.
    pub load_demo: bool,
    /// `POST /api/dev/token` mints tokens: only when tokens are verified with the generated
    /// development secret (no `ASSESSD_JWT_SECRET`, no public key). Off unless `serve` finds
    /// itself in that case.
    pub dev_sign_in: bool,
    /// The AI provider; offline by default.
    pub ai: crate::ai::AiConfig,
}

/// How often a node records that it is alive ([`crate::nodes`]), and how long after its
/// last heartbeat the others count it gone.
#[derive(Debug, Clone, Copy)]
pub struct Membership {
    pub every: Duration,
    pub lease: Duration,
}

/// Per-connection limits of the WebSocket server.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_message_bytes: usize,
    pub idle_timeout: Duration,
    pub ping_interval: Duration,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    pub outbound_queue: usize,
    /// How long a client's socket may accept no write before it is disconnected.
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: defaults::MAX_CONNECTIONS,
            max_message_bytes: defaults::MAX_MESSAGE_BYTES,
            idle_timeout: Duration::from_secs(defaults::IDLE_TIMEOUT_SECS),
            ping_interval: Duration::from_secs(defaults::PING_INTERVAL_SECS),
            rate_per_sec: defaults::RATE_PER_SEC,
            rate_burst: defaults::RATE_BURST,
            outbound_queue: defaults::OUTBOUND_QUEUE,
            write_timeout: Duration::from_secs(defaults::WRITE_TIMEOUT_SECS),
        }
    }
}

impl Settings {
    /// Settings for a server on `bind` against `database_url`, with default limits.
    pub fn new(bind: SocketAddr, database_url: impl Into<String>, jwt_secret: Secret) -> Self {
        Self {
            bind,
            database_url: database_url.into(),
            jwt_secret,
            jwt_public_key: None,
            jwt_issuer: None,
            jwt_audience: None,
            node_id: default_node_id(),
            limits: Limits::default(),
            db_pool: defaults::DB_POOL,
            snapshot_every: defaults::SNAPSHOT_EVERY,
            shutdown_grace: Duration::from_secs(defaults::SHUTDOWN_GRACE_SECS),
            membership: Membership {
                every: Duration::from_millis(defaults::HEARTBEAT_MS),
                lease: Duration::from_millis(defaults::NODE_LEASE_MS),
            },
            load_demo: true,
            dev_sign_in: false,
            ai: crate::ai::AiConfig::default(),
        }
    }
}

impl Settings {
    /// The token verifier: the public key when one is configured, else the secret.
    pub fn jwt_keys(&self) -> anyhow::Result<crate::auth::JwtKeys> {
        let (iss, aud) = (self.jwt_issuer.clone(), self.jwt_audience.clone());
        match &self.jwt_public_key {
            Some(pem) => crate::auth::JwtKeys::public_key(pem, iss, aud),
            None => Ok(crate::auth::JwtKeys::hs256(&self.jwt_secret, iss, aud)),
        }
    }
}

impl ServeArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections,
            max_message_bytes: self.max_message_bytes,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs.max(1)),
            ping_interval: Duration::from_secs(self.ping_interval_secs.max(1)),
            rate_per_sec: self.rate_per_sec.max(1),
            rate_burst: self.rate_burst.max(1),
            outbound_queue: self.outbound_queue.max(8),
            write_timeout: Duration::from_secs(self.write_timeout_secs.max(1)),
        }
    }
}

/// A node id for event metadata and the connections report: the host name and the process
/// id (`web-1-4242`), so two servers on one host are told apart; `node` and the process id
/// when the host has no name.
pub fn default_node_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_string());
    format!("{}-{}", host.trim(), std::process::id())
}
