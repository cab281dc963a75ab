//! The `assessd` binary as a new user meets it: each subcommand shows only its own flags,
//! and an unreachable PostgreSQL is reported with its cause.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

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

#[test]
fn each_subcommand_shows_only_its_own_flags() {
    let cwd = tempfile::tempdir().unwrap();
    let help = |args: &[&str]| {
        let result = run(assessd(cwd.path()).args(args));
        assert!(result.ok, "{args:?}: {}", result.err);
        result.out
    };
    let token = help(&["token", "--help"]);
    for flag in ["--sub", "--ttl", "--jwt-secret", "--data-dir"] {
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
