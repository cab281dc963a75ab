//! Storage wiring: one `DATABASE_URL` selects SQLite (the embedded default) or PostgreSQL.
//!
//! - [`streams`]: the per-user event streams: read in one statement (`read_stream.rs`), kept
//!   in memory between a live user's commands, appended in one transaction.
//! - [`catalog`]: versioned test definitions.
//! - [`chain`]: the repository the streams write through: a tamper-evidence hash chain in
//!   each event's metadata, and the append of each store.
//! - [`owners`]: the table of which session owns each user (PostgreSQL).
//! - [`claims`]: connections' claims of their users, many in one statement (PostgreSQL).
//! - [`pg_append`]: the PostgreSQL append, events and snapshot with the session-owner
//!   check in one statement.
//! - [`sqlite_append`]: the SQLite append, many users' commits in one transaction (group
//!   commit) by one writer task.
//! - [`audit`]: read-only queries over the event history for auditors.
//! - [`audit_log`]: the log of those reads (who read whose data, when, how).
//! - [`takers`]: which users' streams hold a test's answers or overrides (indexed).
//! - [`jobs`]: the admin jobs' rows (rebuilds, regrades), shared by every node.
//!
//! The schema is ours (`migrations/sqlite`, `migrations/postgres`), applied at start-up and
//! by `assessd migrate`.

pub mod audit;
pub mod audit_log;
pub mod catalog;
pub mod chain;
pub mod claims;
pub mod jobs;
pub mod nodes;
pub mod owners;
pub mod pg_append;
pub mod read_stream;
pub mod sqlite_append;
pub mod streams;
pub mod takers;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, PgConnection, PgPool, SqlitePool};
use thiserror::Error;

/// A connection pool on one of the two supported backends.
#[derive(Clone, Debug)]
pub enum Database {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A storage failure. The detail is for logs; clients only ever see `internal`.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("stored data could not be read: {0}")]
    Corrupt(String),
    #[error("event store error: {0}")]
    EventStore(String),
}

/// How long to wait for PostgreSQL to answer, and for a pooled connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a `DATABASE_URL` points at, for telling the user which database a command uses and
/// for finding the directory beside a SQLite file. It never holds a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file; a relative path is relative to the working directory.
    SqliteFile(PathBuf),
    /// A SQLite database that lives only as long as the process (`sqlite::memory:`,
    /// `?mode=memory`, or an empty path).
    SqliteMemory,
    /// PostgreSQL: the URL with any password replaced by `***`.
    Postgres(String),
}

impl Location {
    /// Reads `url` the way [`Database::connect`] will.
    ///
    /// # Errors
    /// When the URL is neither SQLite nor PostgreSQL, or sqlx cannot parse it.
    pub fn of(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("sqlite:") {
            // The same prefix handling as sqlx's SqliteConnectOptions::from_str.
            let rest = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            let (database, params) = rest.split_once('?').unwrap_or((rest, ""));
            let memory_mode = serde_urlencoded::from_str::<Vec<(String, String)>>(params)
                .unwrap_or_default()
                .iter()
                .any(|(key, value)| key == "mode" && value == "memory");
            let options = SqliteConnectOptions::from_str(url)
                .map_err(flat)
                .with_context(|| "Failed to parse the SQLite DATABASE_URL")?;
            let file = options.get_filename();
            if database == ":memory:" || memory_mode || file.as_os_str().is_empty() {
                return Ok(Location::SqliteMemory);
            }
            Ok(Location::SqliteFile(file.to_path_buf()))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            PgConnectOptions::from_str(url)
                .map_err(flat)
                .with_context(|| "Failed to parse the PostgreSQL DATABASE_URL")?;
            Ok(Location::Postgres(redact_password(url)))
        } else {
            anyhow::bail!("DATABASE_URL must start with sqlite:// or postgres://")
        }
    }

    /// The SQLite file, when there is one.
    pub fn sqlite_file(&self) -> Option<&Path> {
        match self {
            Location::SqliteFile(path) => Some(path),
            _ => None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::SqliteFile(path) => write!(f, "SQLite file {}", absolute(path).display()),
            Location::SqliteMemory => f.write_str("an in-memory SQLite database (nothing is kept)"),
            Location::Postgres(url) => write!(f, "PostgreSQL {url}"),
        }
    }
}

/// `path` made absolute against the working directory, for messages; as given when the
/// working directory cannot be read.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `url` with the password of its user info and any `password=` parameter replaced by
/// `***`. When in doubt it hides more: a malformed URL must not leak a password.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_query(url);
    };
    // The last `@` ends the user info even when an unencoded `/`, `?` or `@` sits in the
    // password; a later `@` only makes more of the URL hidden.
    let (userinfo, host) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let userinfo = match userinfo {
        Some(info) => match info.split_once(':') {
            Some((user, _password)) => format!("{user}:***@"),
            None => format!("{info}@"),
        },
        None => String::new(),
    };
    format!("{scheme}://{userinfo}{}", redact_query(host))
}

fn redact_query(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{base}?{}", pairs.join("&"))
}

/// Where a PostgreSQL connection goes, for error messages: `host:port/database`.
fn pg_target(options: &PgConnectOptions) -> String {
    // PostgreSQL's default database is the user's name.
    let database = options
        .get_database()
        .unwrap_or_else(|| options.get_username());
    match options.get_socket() {
        Some(socket) => format!("{}/{database}", socket.display()),
        None => format!("{}:{}/{database}", options.get_host(), options.get_port()),
    }
}

/// A sqlx error as one message: its text already includes its source, which `{:#}` would
/// print a second time.
fn flat(e: sqlx::Error) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

impl Database {
    /// Opens a pool for `url` (`sqlite://PATH` or `postgres://...`), creating the SQLite file
    /// when it does not exist.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(flat)
                .with_context(|| "Failed to parse the SQLite DATABASE_URL")?;
            let file = absolute(options.get_filename());
            let options = options
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: a recorded answer survives a power cut, not only a process crash.
                .synchronous(SqliteSynchronous::Full)
                // SQLite has one writer at a time; others wait for the lock instead of failing.
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                // Rows cross from SQLite's thread to the reader's one by one; with sqlx's
                // default of 50 in flight the two threads wake each other for nearly every
                // row of a long read (the export ran 25% slower).
                .row_buffer_size(1024);
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections.clamp(1, 16))
                .acquire_timeout(CONNECT_TIMEOUT)
                .connect_with(options)
                .await
                .map_err(flat)
                .with_context(|| {
                    format!("Failed to open the SQLite database {}", file.display())
                })?;
            Ok(Database::Sqlite(pool))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let options = PgConnectOptions::from_str(url)
                .map_err(flat)
                .with_context(|| "Failed to parse the PostgreSQL DATABASE_URL")?;
            let target = pg_target(&options);
            // The pool retries a failing connection until its acquire timeout and then says
            // only "pool timed out"; one direct connection first reports the real cause
            // (refused, unknown host, authentication failed, no such database).
            let probe =
                match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
                    .await
                {
                    Ok(connected) => connected.map_err(flat),
                    Err(_) => Err(anyhow::anyhow!(
                        "no answer within {} s",
                        CONNECT_TIMEOUT.as_secs()
                    )),
                }
                .with_context(|| format!("Failed to connect to PostgreSQL at {target}"))?;
            // The probe has done its job; a failure to say goodbye changes nothing.
            let _ = probe.close().await;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections.max(1))
                .acquire_timeout(CONNECT_TIMEOUT)
                .connect_with(options)
                .await
                .map_err(flat)
                .with_context(|| format!("Failed to connect to PostgreSQL at {target}"))?;
            Ok(Database::Postgres(pool))
        } else {
            anyhow::bail!("DATABASE_URL must start with sqlite:// or postgres://")
        }
    }

    /// Applies every pending migration of this backend.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            Database::Sqlite(pool) => sqlx::migrate!("./migrations/sqlite").run(pool).await,
            Database::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await,
        }
        .with_context(|| "Failed to apply database migrations")
    }

    /// Ready when the database answers and every migration this build knows is applied.
    pub async fn is_ready(&self) -> Result<bool, StoreError> {
        let expected = match self {
            Database::Sqlite(_) => sqlx::migrate!("./migrations/sqlite").iter().count(),
            Database::Postgres(_) => sqlx::migrate!("./migrations/postgres").iter().count(),
        } as i64;
        let sql = "select count(*) from _sqlx_migrations where success";
        let applied: i64 = match self {
            Database::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
            Database::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        };
        Ok(applied >= expected)
    }

    /// The same pool, as the read models take it.
    pub fn for_projections(&self) -> projections::Db {
        match self {
            Database::Sqlite(pool) => projections::Db::Sqlite(pool.clone()),
            Database::Postgres(pool) => projections::Db::Postgres(pool.clone()),
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Database::Sqlite(_) => "sqlite",
            Database::Postgres(_) => "postgres",
        }
    }

    pub async fn close(&self) {
        match self {
            Database::Sqlite(pool) => pool.close().await,
            Database::Postgres(pool) => pool.close().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_their_file() {
        for (url, file) in [
            ("sqlite://assessd.db", "assessd.db"),
            ("sqlite:assessd.db", "assessd.db"),
            ("sqlite:///srv/data/a.db", "/srv/data/a.db"),
            ("sqlite://data/a.db?mode=rwc", "data/a.db"),
            ("sqlite:data/a%3Fb.db", "data/a?b.db"),
        ] {
            assert_eq!(
                Location::of(url).unwrap(),
                Location::SqliteFile(PathBuf::from(file)),
                "{url}"
            );
        }
        for url in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite://a.db?mode=memory",
        ] {
            assert_eq!(Location::of(url).unwrap(), Location::SqliteMemory, "{url}");
        }
        assert!(Location::of("sqlite://a.db?bogus=1").is_err());
        assert!(Location::of("mysql://localhost/a").is_err());
    }

    #[test]
    fn passwords_never_show() {
        for (url, shown) in [
            (
                "postgres://postgres:hunter2@127.0.0.1:5432/assessd",
                "postgres://postgres:***@127.0.0.1:5432/assessd",
            ),
            (
                "postgresql://me@db.example/assessd?sslmode=require",
                "postgresql://me@db.example/assessd?sslmode=require",
            ),
            (
                "postgres://db.example/assessd?user=me&password=hunter2",
                "postgres://db.example/assessd?user=me&password=***",
            ),
            // an unencoded `/`, `?` or `@` in the password still hides all of it
            ("postgres://me:hun/t?er@2@h/d", "postgres://me:***@h/d"),
        ] {
            assert_eq!(redact_password(url), shown);
        }
        let location = Location::of("postgres://me:hunter2@localhost/x?password=hunter2")
            .unwrap()
            .to_string();
        assert!(!location.contains("hunter2"), "{location}");
    }
}
