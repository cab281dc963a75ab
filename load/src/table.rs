//! The one table `benches/run.sh` prints: it reads the run's results file (one line per
//! measurement: store, label, the generator's JSON report) and puts SQLite, PostgreSQL
//! and the targets side by side. A measurement made more than once shows its
//! median.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context;
use serde_json::Value;

use crate::cli::TableArgs;

/// Results by (store, label), each run's report in order.
struct Results(BTreeMap<(String, String), Vec<Value>>);

impl Results {
    fn read(text: &str) -> Self {
        let mut map: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
        for line in text.lines() {
            let mut parts = line.splitn(3, '\t');
            let (Some(store), Some(label), Some(json)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if let Ok(value) = serde_json::from_str::<Value>(json) {
                map.entry((store.to_string(), label.to_string()))
                    .or_default()
                    .push(value);
            }
        }
        Results(map)
    }

    fn runs(&self, store: &str, label: &str) -> &[Value] {
        self.0
            .get(&(store.to_string(), label.to_string()))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The median over runs of the number at `pointer`.
    fn median(&self, store: &str, label: &str, pointer: &str) -> Option<f64> {
        let mut values: Vec<f64> = self
            .runs(store, label)
            .iter()
            .filter_map(|v| v.pointer(pointer).and_then(Value::as_f64))
            .collect();
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied()
    }

    fn labels(&self, prefix: &str) -> Vec<(u64, String)> {
        let mut labels: Vec<(u64, String)> = self
            .0
            .keys()
            .filter_map(|(_, label)| {
                let n = label.strip_prefix(prefix)?.parse().ok()?;
                Some((n, label.clone()))
            })
            .collect();
        labels.sort();
        labels.dedup();
        labels
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| {
        if v < 10.0 {
            format!("{v:.2}")
        } else {
            format!("{v:.0}")
        }
    })
}

fn count(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

pub fn run(args: &TableArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.results)
        .with_context(|| format!("Failed to read {}", args.results.display()))?;
    let r = Results::read(&text);
    let stores = ["sqlite", "postgres"];
    let mut rows: Vec<[String; 4]> = Vec::new();
    let mut row = |name: &str, cell: &dyn Fn(&str) -> String, target: &str| {
        rows.push([
            name.to_string(),
            cell(stores[0]),
            cell(stores[1]),
            target.to_string(),
        ]);
    };

    row(
        "idle sockets held",
        &|s| {
            format!(
                "{} of {}",
                count(r.median(s, "idle", "/connect/connected")),
                count(r.median(s, "idle", "/connect/users"))
            )
        },
        "19,000",
    );
    row(
        "server memory per idle socket",
        &|s| {
            r.median(s, "idle", "/server/kib_per_socket")
                .map_or("-".into(), |v| format!("{v:.1} KiB"))
        },
        "<= 8 KiB",
    );
    row(
        "server RSS: before / held / after close",
        &|s| {
            let mib = |p: &str| {
                r.median(s, "idle", p)
                    .map_or("-".into(), |v| format!("{:.0}", v / 1024.0))
            };
            format!(
                "{} / {} / {} MiB",
                mib("/server/rss_kib_before"),
                mib("/server/rss_kib_loaded"),
                mib("/server/rss_kib_after")
            )
        },
        "given back",
    );
    row(
        "connects/s (each resumes an attempt)",
        &|s| {
            format!(
                "{}/s (target {}/s)",
                count(r.median(s, "connect", "/connect/per_sec")),
                count(r.median(s, "connect", "/connect/rate_target"))
            )
        },
        "5,000/s",
    );
    row(
        "connect -> CONNECTED p50 / p99",
        &|s| {
            format!(
                "{} / {} ms",
                ms(r.median(s, "connect", "/connect/latency/p50_ms")),
                ms(r.median(s, "connect", "/connect/latency/p99_ms"))
            )
        },
        "p99 <= 10 ms",
    );
    row(
        "connect -> resumed QUESTION p99",
        &|s| {
            format!(
                "{} ms",
                ms(r.median(s, "connect", "/connect/resume/p99_ms"))
            )
        },
        "",
    );
    for (c, label) in r.labels("commit@") {
        row(
            &format!("raw INSERT+COMMIT/s, {c} connection(s)"),
            &|s| {
                format!(
                    "{}/s, p50 {} ms",
                    count(r.median(s, &label, "/per_sec")),
                    ms(r.median(s, &label, "/latency/p50_ms"))
                )
            },
            "",
        );
    }
    let answer_cell = |s: &str, label: &str| {
        let (Some(per_sec), Some(due), Some(done)) = (
            r.median(s, label, "/answers/per_sec"),
            r.median(s, label, "/answers/due"),
            r.median(s, label, "/answers/done"),
        ) else {
            return "-".to_string();
        };
        let late = if done < due {
            format!(", {:.0} unanswered", due - done)
        } else {
            String::new()
        };
        format!(
            "{per_sec:.0}/s, p50 {} / p99 {} ms{late}",
            ms(r.median(s, label, "/answers/latency/p50_ms")),
            ms(r.median(s, label, "/answers/latency/p99_ms"))
        )
    };
    let answer_labels = r.labels("answer@");
    for (rate, label) in &answer_labels {
        let target = if *rate >= 2000 {
            "PG: p50 <= flush+1, p99 <= 25 ms"
        } else {
            ""
        };
        let users = ["sqlite", "postgres"]
            .iter()
            .find_map(|s| r.median(s, label, "/connect/users"))
            .unwrap_or(0.0);
        row(
            &format!("answers at {rate}/s ({users:.0} users)"),
            &|s| answer_cell(s, label),
            target,
        );
    }
    let pool = args.pool;
    row(
        &format!("best answers/s / raw commits/s ({pool} conn.)"),
        &|s| {
            let best = answer_labels
                .iter()
                .filter_map(|(_, l)| r.median(s, l, "/answers/per_sec"))
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
            let raw = r.median(s, &format!("commit@{pool}"), "/per_sec");
            match (best, raw) {
                (Some(b), Some(raw)) if raw > 0.0 => format!("{b:.0} / {raw:.0} = {:.2}x", b / raw),
                _ => "-".into(),
            }
        },
        "",
    );
    row(
        "best answers/s / raw commits/s (1 conn.)",
        &|s| {
            let best = answer_labels
                .iter()
                .filter_map(|(_, l)| r.median(s, l, "/answers/per_sec"))
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
            let raw = r.median(s, "commit@1", "/per_sec");
            match (best, raw) {
                (Some(b), Some(raw)) if raw > 0.0 => format!("{b:.0} / {raw:.0} = {:.2}x", b / raw),
                _ => "-".into(),
            }
        },
        "PG: >= 3x",
    );
    for (users, label) in r.labels("scale@") {
        let rate = r
            .runs("sqlite", &label)
            .iter()
            .chain(r.runs("postgres", &label))
            .find_map(|v| v.pointer("/answers/rate_target").and_then(Value::as_f64))
            .unwrap_or(0.0);
        row(
            &format!("{users} active users at {rate:.0}/s"),
            &|s| answer_cell(s, &label),
            "scaling curve",
        );
    }
    row(
        "errors (all runs)",
        &|s| {
            let mut codes: BTreeMap<String, u64> = BTreeMap::new();
            for ((store, _), runs) in &r.0 {
                if store != s {
                    continue;
                }
                for run in runs {
                    if let Some(errors) = run.get("errors").and_then(Value::as_object) {
                        for (code, n) in errors {
                            *codes.entry(code.clone()).or_insert(0) += n.as_u64().unwrap_or(0);
                        }
                    }
                }
            }
            if codes.is_empty() {
                "none".into()
            } else {
                codes
                    .iter()
                    .map(|(c, n)| format!("{c} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        },
        "",
    );

    let widths = (0..4)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect::<Vec<_>>();
    let mut out = String::new();
    let header = ["", "SQLite", "PostgreSQL", "target (issue 16)"];
    for line in std::iter::once(header.map(String::from)).chain(rows) {
        let mut text = String::new();
        for (i, cell) in line.iter().enumerate() {
            let w = widths[i].max(header[i].len());
            let _ = write!(text, "{cell:<w$}  ");
        }
        let _ = writeln!(out, "{}", text.trim_end());
    }
    if let Some(ops) = r.median("machine", "fsync", "/fdatasync_ops_per_sec") {
        let _ = writeln!(
            out,
            "disk flush (pg_test_fsync, one 8 kB write, fdatasync): {ops:.0} ops/s = {:.2} ms per flush",
            1000.0 / ops.max(0.001)
        );
    }
    if let Some(settings) = r.runs("postgres", "settings").first() {
        let _ = writeln!(out, "PostgreSQL: {settings}");
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or("?".into(), |kib| {
            format!("{:.0} GiB", kib / 1024.0 / 1024.0)
        });
    let _ = writeln!(
        out,
        "mode {}; machine: {cores} cores, {memory}; server, generator and PostgreSQL share them",
        args.mode
    );
    print!("{out}");
    Ok(())
}
