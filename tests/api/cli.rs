//! The `assessd` binary as a new user meets it: from any working directory it says which
//! database and which secret it uses, warns when it has just created one, keeps the
//! development secret beside the SQLite file, shows each subcommand's own flags, and says
//! why PostgreSQL cannot be reached; `dev seed` records attempts that `projections rebuild`
//! turns into the read model.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assessd::auth::{JwtKeys, Secret};

const SECRET_FILE: &str = ".assessd-dev-secret";

/// `assessd` started in `cwd` with none of the caller's configuration.
fn assessd(cwd: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_assessd"));
    command.current_dir(cwd);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("ASSESSD_") || name.starts_with("OPENAI_") || name == "DATABASE_URL" {
            command.env_remove(&*name);
        }
    }
    command.env("RUST_LOG", "info");
    command
}

struct Run {
    ok: bool,
    out: String,
    err: String,
}

fn run(command: &mut Command) -> Run {
    let output = command.output().expect("assessd runs");
    Run {
        ok: output.status.success(),
        out: String::from_utf8_lossy(&output.stdout).into_owned(),
        err: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn the_development_secret_sits_beside_the_sqlite_file() {
    let cwd = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        data.path().join("assessd.db").display()
    );
    let secret_path = data.path().join(SECRET_FILE);

    let first = run(assessd(cwd.path())
        .args(["token", "--sub", "zoe"])
        .env("DATABASE_URL", &url));
    assert!(first.ok, "{}", first.err);
    assert!(
        files_in(cwd.path()).is_empty(),
        "nothing is written to the working directory"
    );
    assert_eq!(
        files_in(data.path()),
        [SECRET_FILE],
        "no database is opened"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret_path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "readable by the owner only");
    }
    let secret = std::fs::read_to_string(&secret_path).unwrap();
    assert!(
        first.err.contains(&format!(
            "warning: created a new development secret at {}",
            secret_path.display()
        )),
        "{}",
        first.err
    );
    assert!(
        !first.err.contains(secret.trim()),
        "the secret never prints"
    );
    // Stdout is the token alone, for `TOKEN=$(assessd token ...)`.
    assert_eq!(first.out.lines().count(), 1, "{}", first.out);
    let keys = JwtKeys::hs256(&Secret::new(secret.trim()), None, None);
    assert_eq!(keys.verify(first.out.trim()).unwrap().user_id, "zoe");

    let again = run(assessd(cwd.path())
        .args(["token", "--sub", "zoe"])
        .env("DATABASE_URL", &url));
    assert!(again.ok, "{}", again.err);
    assert!(
        again
            .err
            .contains(&format!("development secret in {}", secret_path.display())),
        "{}",
        again.err
    );
    assert!(!again.err.contains("warning:"), "{}", again.err);
    assert!(keys.verify(again.out.trim()).is_ok());

    // `sqlite:RELATIVE` is relative to the working directory; PostgreSQL keeps it in `.`,
    // and `token` does not connect (nothing listens on port 1).
    for (url, dir) in [
        (
            "sqlite:nested/other.db".to_string(),
            cwd.path().join("nested"),
        ),
        (
            "postgres://postgres@127.0.0.1:1/x".to_string(),
            cwd.path().to_path_buf(),
        ),
    ] {
        let made = run(assessd(cwd.path())
            .args(["token", "--sub", "zoe"])
            .env("DATABASE_URL", &url));
        assert!(made.ok, "{url}: {}", made.err);
        assert!(dir.join(SECRET_FILE).is_file(), "{url}: {}", made.err);
    }

    // A configured secret is named, never shown.
    let configured = "configured-secret-0123456789";
    let named = run(assessd(cwd.path())
        .args(["token", "--sub", "zoe"])
        .env("ASSESSD_JWT_SECRET", configured));
    assert!(named.ok, "{}", named.err);
    assert!(named.err.contains("ASSESSD_JWT_SECRET"), "{}", named.err);
    assert!(!named.err.contains(configured), "{}", named.err);
}

#[test]
fn migrate_and_import_name_their_database_and_warn_when_they_create_it() {
    let cwd = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let db = data.path().join("assessd.db");
    let url = format!("sqlite://{}", db.display());
    let created = format!(
        "warning: created a new, empty SQLite database at {}",
        db.display()
    );

    let first = run(assessd(cwd.path()).arg("migrate").env("DATABASE_URL", &url));
    assert!(first.ok, "{}", first.err);
    assert_eq!(first.out.trim(), "migrations applied (sqlite)");
    assert!(
        first
            .err
            .contains(&format!("database: SQLite file {}", db.display())),
        "{}",
        first.err
    );
    assert!(first.err.contains(&created), "{}", first.err);
    assert!(files_in(cwd.path()).is_empty());

    let again = run(assessd(cwd.path()).arg("migrate").env("DATABASE_URL", &url));
    assert!(again.ok, "{}", again.err);
    assert!(!again.err.contains("warning:"), "{}", again.err);

    let file = cwd.path().join("colours.json");
    std::fs::write(&file, crate::helpers::small_test(1, None).to_string()).unwrap();
    let import = run(assessd(cwd.path())
        .args(["tests", "import", "colours.json"])
        .env("DATABASE_URL", &url));
    assert!(import.ok, "{}", import.err);
    assert_eq!(import.out.lines().count(), 1, "{}", import.out);
    assert!(
        import.err.contains(&db.display().to_string()),
        "{}",
        import.err
    );
    assert!(!import.err.contains("warning:"), "{}", import.err);

    // Importing into a database that does not exist yet says so.
    let elsewhere = run(assessd(cwd.path())
        .args(["tests", "import", "colours.json"])
        .env("DATABASE_URL", "sqlite:fresh.db"));
    assert!(elsewhere.ok, "{}", elsewhere.err);
    let fresh = cwd.path().join("fresh.db");
    assert!(
        elsewhere.err.contains(&format!(
            "warning: created a new, empty SQLite database at {}",
            fresh.display()
        )),
        "{}",
        elsewhere.err
    );
}

/// Kills the server when a test ends, passing or not.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `command` (a server on port 0), waits for the line it prints once it listens,
/// stops it, and returns its log.
fn serve_and_stop(command: &mut Command) -> String {
    let mut server = Server(
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("assessd starts"),
    );
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut stderr = server.0.stderr.take().unwrap();
    drop(server);
    let mut log = String::new();
    stderr.read_to_string(&mut log).unwrap();
    assert!(line.starts_with("assessd listening on"), "{line}{log}");
    log
}

#[test]
fn serve_logs_its_database_and_secret() {
    let cwd = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let db = data.path().join("served").join("assessd.db");
    let url = format!("sqlite://{}", db.display());
    let secret_path = data.path().join("served").join(SECRET_FILE);

    // No subcommand: the server options come from the environment.
    let log = serve_and_stop(
        assessd(cwd.path())
            .env("ASSESSD_BIND", "127.0.0.1:0")
            .env("DATABASE_URL", &url),
    );
    for expected in [
        format!("SQLite file {}", db.display()),
        format!("created a new, empty SQLite database at {}", db.display()),
        format!(
            "created a new development secret at {}",
            secret_path.display()
        ),
    ] {
        assert!(log.contains(&expected), "{expected:?} not in\n{log}");
    }
    assert!(secret_path.is_file());
    assert!(files_in(cwd.path()).is_empty());

    let log = serve_and_stop(assessd(cwd.path()).args([
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--database-url",
        &url,
    ]));
    assert!(log.contains(&secret_path.display().to_string()), "{log}");
    assert!(!log.contains("created a new"), "{log}");
}

#[test]
fn serve_logs_its_ai_profiles_and_never_their_keys() {
    const DEFAULT_KEY: &str = "sk-cli-default-key-0123456789";
    const COURSE_KEY: &str = "sk-cli-course-key-9876543210";
    let cwd = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", cwd.path().join("assessd.db").display());
    let configured = |command: &mut Command| {
        command
            .env("ASSESSD_BIND", "127.0.0.1:0")
            .env("DATABASE_URL", &url)
            .env("OPENAI_API_KEY", DEFAULT_KEY)
            .env("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
            .env("ASSESSD_AI_PROFILES", "course-a")
            .env("ASSESSD_AI_PROFILE_COURSE_A_API_KEY", COURSE_KEY)
            .env("ASSESSD_AI_PROFILE_COURSE_A_MODEL", "model-a");
    };

    let mut command = assessd(cwd.path());
    configured(&mut command);
    let log = serve_and_stop(&mut command);
    assert!(log.contains("AI provider profile"), "{log}");
    assert!(log.contains("course-a") && log.contains("model-a"), "{log}");
    assert!(log.contains("http://127.0.0.1:9/v1"), "{log}");
    assert!(
        !log.contains(DEFAULT_KEY) && !log.contains(COURSE_KEY),
        "{log}"
    );

    // The help shows where a key comes from, never its value.
    let mut command = assessd(cwd.path());
    configured(&mut command);
    let help = run(command.args(["serve", "--help"]));
    assert!(help.out.contains("OPENAI_API_KEY"), "{}", help.out);
    assert!(!help.out.contains(DEFAULT_KEY), "{}", help.out);

    // A mistake stops the server and names its variable.
    let mut command = assessd(cwd.path());
    configured(&mut command);
    let refused = run(command.env("ASSESSD_AI_PROFILES", "course-a,Course-B"));
    assert!(!refused.ok);
    assert!(
        refused.err.contains("ASSESSD_AI_PROFILES"),
        "{}",
        refused.err
    );
    assert!(!refused.err.contains(DEFAULT_KEY), "{}", refused.err);
}

#[test]
fn each_subcommand_shows_only_its_own_flags() {
    let cwd = tempfile::tempdir().unwrap();
    let help = |args: &[&str]| {
        let result = run(assessd(cwd.path()).args(args));
        assert!(result.ok, "{args:?}: {}", result.err);
        result.out
    };
    let token = help(&["token", "--help"]);
    for flag in [
        "--sub",
        "--ttl",
        "--jwt-secret",
        "--data-dir",
        "--database-url",
    ] {
        assert!(token.contains(flag), "{flag} missing from\n{token}");
    }
    for flag in ["--bind", "--max-connections", "--db-pool"] {
        assert!(!token.contains(flag), "{flag} in\n{token}");
    }
    for args in [
        &["tests", "import", "--help"][..],
        &["migrate", "--help"],
        &["projections", "rebuild", "--help"],
        &["dev", "seed", "--help"],
    ] {
        let text = help(args);
        assert!(text.contains("--database-url"), "{text}");
        for flag in ["--bind", "--jwt-secret", "--max-connections"] {
            assert!(!text.contains(flag), "{args:?}: {flag} in\n{text}");
        }
    }
    for args in [&["serve", "--help"][..], &["--help"]] {
        let text = help(args);
        for flag in ["--bind", "--max-connections", "--write-timeout-secs"] {
            assert!(text.contains(flag), "{args:?}: {flag} missing from\n{text}");
        }
    }
}

#[test]
fn an_unreachable_postgres_says_why() {
    let cwd = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let result = run(assessd(cwd.path())
        .arg("migrate")
        .env("DATABASE_URL", "postgres://postgres:hunter2@127.0.0.1:1/x"));
    let took = started.elapsed();
    assert!(!result.ok);
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}: {}",
        result.err
    );
    assert!(result.err.contains("127.0.0.1:1/x"), "{}", result.err);
    assert!(
        result.err.to_lowercase().contains("refused"),
        "{}",
        result.err
    );
    assert!(!result.err.contains("hunter2"), "{}", result.err);
    assert!(
        result.err.contains("postgres://postgres:***@127.0.0.1:1/x"),
        "{}",
        result.err
    );
}

/// The one number of `sql` in the SQLite database at `url`.
fn sqlite_count(url: &str, sql: &str) -> i64 {
    use sqlx::Connection;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        n
    })
}

/// Runs the statement `sql` on the SQLite database at `url`.
fn sqlite_execute(url: &str, sql: &str) {
    use sqlx::Connection;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    })
}

/// Reads `rebuilt NAME: N events in S s (R events/s)` and returns N, checking the rest.
fn rebuilt_events(line: &str, name: &str) -> u64 {
    let rest = line
        .strip_prefix(&format!("rebuilt {name}: "))
        .unwrap_or_else(|| panic!("{line:?}"));
    let (events, rest) = rest
        .split_once(" events in ")
        .unwrap_or_else(|| panic!("{line:?}"));
    let (secs, rate) = rest
        .strip_suffix(" events/s)")
        .and_then(|r| r.split_once(" s ("))
        .unwrap_or_else(|| panic!("{line:?}"));
    assert!(secs.parse::<f64>().is_ok(), "{line:?}");
    assert!(
        !rate.is_empty() && rate.replace(',', "").parse::<u64>().is_ok(),
        "{line:?}"
    );
    events.parse().unwrap_or_else(|_| panic!("{line:?}"))
}

#[test]
fn seeded_attempts_become_the_read_model_after_a_rebuild() {
    let cwd = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", data.path().join("assessd.db").display());
    let count = |sql: &str| sqlite_count(&url, sql);
    // The demo test: 4 questions, 3 attempts each. An attempt records its start and first
    // question, then per answer the answer, its feedback and the next question (or the
    // completion): 2 + 3 × 4 events.
    let per_attempt = 14;

    let seeded = run(assessd(cwd.path())
        .args(["dev", "seed", "--attempts", "10"])
        .env("DATABASE_URL", &url));
    assert!(seeded.ok, "{}", seeded.err);
    assert!(
        seeded.err.contains("database: SQLite file"),
        "{}",
        seeded.err
    );
    let line = seeded.out.trim();
    assert_eq!(seeded.out.lines().count(), 1, "{}", seeded.out);
    assert!(
        line.starts_with(&format!(
            "seeded 10 attempts of demo v1 by 4 users (seed-000000001 to seed-000000004): {} events in ",
            10 * per_attempt
        )),
        "{line}"
    );
    assert!(line.ends_with(" events/s)"), "{line}");
    let user_events = "select count(*) from events where aggregate_type = 'user'";
    assert_eq!(count(user_events), 10 * per_attempt);
    assert_eq!(
        count("select count(distinct aggregate_id) from events where aggregate_type = 'user'"),
        4
    );
    // Recorded as the users' own sessions did it, with right and wrong answers.
    assert_eq!(
        count(
            "select count(*) from events where aggregate_type = 'user' \
             and json_extract(metadata, '$.actor') not like 'user:seed-%'"
        ),
        0
    );
    let right = count(
        "select count(*) from events where event_type = 'FeedbackGiven' \
         and json_extract(payload, '$.FeedbackGiven.correct') = 1",
    );
    assert!(0 < right && right < 40, "{right} of 40 answers right");
    // Seeding does not run the read models; the rebuild fills them.
    assert_eq!(count("select count(*) from assessments"), 0);
    // As in a database that no server of this version has run on yet: the rebuild must
    // leave a checkpoint behind, or a server would apply every event again on top of it.
    sqlite_execute(&url, "delete from projection_checkpoints");

    let rebuilt = run(assessd(cwd.path())
        .args(["projections", "rebuild", "assessments"])
        .env("DATABASE_URL", &url));
    assert!(rebuilt.ok, "{}", rebuilt.err);
    assert_eq!(rebuilt.out.lines().count(), 1, "{}", rebuilt.out);
    assert_eq!(
        rebuilt_events(rebuilt.out.trim(), "assessments"),
        10 * per_attempt as u64
    );
    assert_eq!(
        count("select count(*) from assessments where status = 'completed' and answered = 4"),
        10
    );
    assert_eq!(count("select count(distinct user_id) from assessments"), 4);
    assert_eq!(
        count(
            "select events_applied from projection_checkpoints \
             where name = 'assessments' and last_rebuilt_at is not null"
        ),
        10 * per_attempt
    );

    // Seeding again adds users after the ones already there, and `--all` rebuilds every
    // read model from the whole history.
    let again = run(assessd(cwd.path())
        .args([
            "dev",
            "seed",
            "--attempts",
            "10",
            "--users",
            "10",
            "--concurrency",
            "3",
        ])
        .env("DATABASE_URL", &url));
    assert!(again.ok, "{}", again.err);
    assert!(
        again
            .out
            .contains("by 10 users (seed-000000005 to seed-000000014)"),
        "{}",
        again.out
    );
    let all = run(assessd(cwd.path())
        .args(["projections", "rebuild", "--all"])
        .env("DATABASE_URL", &url));
    assert!(all.ok, "{}", all.err);
    assert_eq!(
        all.out.lines().count(),
        projections::runner::ALL.len(),
        "one line per read model: {}",
        all.out
    );
    assert_eq!(
        rebuilt_events(all.out.lines().next().unwrap_or_default(), "assessments"),
        20 * per_attempt as u64
    );
    assert_eq!(count("select count(*) from assessments"), 20);
    assert_eq!(count(user_events), 20 * per_attempt);
}

#[test]
fn rebuild_and_seed_refuse_what_they_cannot_do() {
    let cwd = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", cwd.path().join("assessd.db").display());

    let unknown = run(assessd(cwd.path())
        .args(["projections", "rebuild", "statistcs"])
        .env("DATABASE_URL", &url));
    assert!(!unknown.ok);
    assert!(
        unknown.err.contains("\"statistcs\"") && unknown.err.contains("assessments"),
        "names the read models it knows: {}",
        unknown.err
    );
    assert!(files_in(cwd.path()).is_empty(), "no database is opened");

    let neither = run(assessd(cwd.path())
        .args(["projections", "rebuild"])
        .env("DATABASE_URL", &url));
    assert!(!neither.ok);
    assert!(neither.err.contains("--all"), "{}", neither.err);

    let crowded = run(assessd(cwd.path())
        .args(["dev", "seed", "--attempts", "10", "--users", "3"])
        .env("DATABASE_URL", &url));
    assert!(!crowded.ok);
    assert!(
        crowded.err.contains("at most 9 attempts"),
        "{}",
        crowded.err
    );
    let missing = run(assessd(cwd.path())
        .args(["dev", "seed", "--attempts", "1", "--test", "nope"])
        .env("DATABASE_URL", &url));
    assert!(!missing.ok);
    assert!(missing.err.contains("no test \"nope\""), "{}", missing.err);
    assert_eq!(
        sqlite_count(&url, "select count(*) from events"),
        0,
        "a refused seed records nothing"
    );
}
