//! The `assessd` binary as a new user meets it: the development secret sits beside the
//! SQLite file whatever the working directory, each subcommand shows only its own flags,
//! and an unreachable PostgreSQL is reported with its cause.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use assessd::auth::{JwtKeys, Secret};

const SECRET_FILE: &str = ".assessd-dev-secret";

/// `assessd` started in `cwd` with none of the caller's configuration.
fn assessd(cwd: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_assessd"));
    command.current_dir(cwd);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("ASSESSD_") || name == "DATABASE_URL" {
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

    // A configured secret is never shown.
    let configured = "configured-secret-0123456789";
    let named = run(assessd(cwd.path())
        .args(["token", "--sub", "zoe"])
        .env("ASSESSD_JWT_SECRET", configured));
    assert!(named.ok, "{}", named.err);
    assert!(!named.err.contains(configured), "{}", named.err);
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
    for args in [&["tests", "import", "--help"][..], &["migrate", "--help"]] {
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
}
