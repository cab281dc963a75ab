//! What a run measures: latency histograms (microseconds, HdrHistogram with 3 significant
//! digits), counters, errors by code, and the report built from them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

/// One latency distribution shared by every user task (a short lock per sample: a few
/// thousand samples a second do not contend).
/// `None` only if the histogram could not be built, which these fixed bounds rule out.
pub struct Latency(Mutex<Option<Histogram<u64>>>);

impl Latency {
    pub fn new() -> Self {
        // 1 µs to 10 min; `saturating_record` keeps anything longer at the top.
        Latency(Mutex::new(
            Histogram::new_with_bounds(1, 600_000_000, 3).ok(),
        ))
    }

    pub fn record(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        if let Ok(mut guard) = self.0.lock() {
            if let Some(h) = guard.as_mut() {
                h.saturating_record(micros);
            }
        }
    }

    pub fn summary(&self) -> Summary {
        let Ok(guard) = self.0.lock() else {
            return Summary::default();
        };
        let Some(h) = guard.as_ref() else {
            return Summary::default();
        };
        let ms = |micros: u64| micros as f64 / 1000.0;
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Summary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Everything the user tasks record.
pub struct Stats {
    /// Scheduled connect time to CONNECTED.
    pub connect: Latency,
    /// Scheduled connect time to the resumed QUESTION (users with an attempt in progress).
    pub resume: Latency,
    /// How late the generator itself started a scheduled connect.
    pub connect_lag: Latency,
    /// Scheduled answer time to ANSWER_FEEDBACK (open loop: server delays count).
    pub answer: Latency,
    /// SUBMIT_ANSWER sent to ANSWER_FEEDBACK.
    pub answer_service: Latency,
    /// How late the generator sent an answer whose question was already there.
    pub answer_lag: Latency,
    pub connected: AtomicU64,
    /// Answers due inside the measured window.
    pub answers_due: AtomicU64,
    /// Answers due inside the window that got their ANSWER_FEEDBACK.
    pub answers_done: AtomicU64,
    /// ANSWER_FEEDBACK received while the window was open (any due time).
    pub feedback_in_window: AtomicU64,
    /// Every ANSWER_FEEDBACK of the run, warm-up and drain included.
    pub answers_total: AtomicU64,
    pub attempts_started: AtomicU64,
    pub attempts_completed: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    /// When these stats began; `last_connected_us` counts from it.
    base: Instant,
    /// The latest CONNECTED, in µs after `base`: the end of the connect phase.
    last_connected_us: AtomicU64,
}

impl Stats {
    pub fn new() -> Self {
        Stats {
            connect: Latency::new(),
            resume: Latency::new(),
            connect_lag: Latency::new(),
            answer: Latency::new(),
            answer_service: Latency::new(),
            answer_lag: Latency::new(),
            connected: AtomicU64::new(0),
            answers_due: AtomicU64::new(0),
            answers_done: AtomicU64::new(0),
            feedback_in_window: AtomicU64::new(0),
            answers_total: AtomicU64::new(0),
            attempts_started: AtomicU64::new(0),
            attempts_completed: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            base: Instant::now(),
            last_connected_us: AtomicU64::new(0),
        }
    }

    pub fn mark_connected(&self) {
        self.connected.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_connected_us.fetch_max(micros, Ordering::Relaxed);
    }

    /// When the last connection of the phase reached CONNECTED.
    pub fn last_connected(&self) -> Instant {
        self.base + Duration::from_micros(self.last_connected_us.load(Ordering::Relaxed))
    }

    pub fn error(&self, code: impl Into<String>) {
        if let Ok(mut errors) = self.errors.lock() {
            *errors.entry(code.into()).or_insert(0) += 1;
        }
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }

    pub fn count(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The server's memory over the run, in KiB.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ServerMemory {
    pub pid: Option<u32>,
    pub rss_kib_before: Option<u64>,
    pub rss_kib_loaded: Option<u64>,
    pub rss_kib_after: Option<u64>,
    /// (loaded - before) / connected sockets.
    pub kib_per_socket: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectReport {
    pub users: usize,
    pub connected: u64,
    pub rate_target: f64,
    /// Connections that reached CONNECTED per second of the connect phase.
    pub per_sec: f64,
    pub secs: f64,
    pub latency: Summary,
    pub resume: Summary,
    pub own_lag: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct AnswerReport {
    pub rate_target: f64,
    pub window_secs: f64,
    pub due: u64,
    pub done: u64,
    /// ANSWER_FEEDBACK received per second while the window was open.
    pub per_sec: f64,
    pub latency: Summary,
    pub service: Summary,
    pub own_lag: Summary,
    pub answers_total: u64,
    pub attempts_started: u64,
    pub attempts_completed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientInfo {
    pub nofile_limit: u64,
    pub source_ips: u8,
    pub user_prefix: String,
    pub warnings: Vec<String>,
}

/// The whole run, as printed.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub connect: ConnectReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answers: Option<AnswerReport>,
    pub server: ServerMemory,
    pub errors: BTreeMap<String, u64>,
    pub errors_total: u64,
    pub client: ClientInfo,
}

impl Report {
    /// The human table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, name: &str, value: String| {
            out.push_str(&format!("{name:<34} {value}\n"));
        };
        let lat = |s: &Summary| {
            if s.count == 0 {
                "-".to_string()
            } else {
                format!(
                    "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (n={})",
                    s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms, s.count
                )
            }
        };
        line(&mut out, "scenario", self.scenario.to_string());
        let c = &self.connect;
        line(
            &mut out,
            "connections",
            format!(
                "{} of {} in {:.2} s: {:.0}/s (target {:.0}/s)",
                c.connected, c.users, c.secs, c.per_sec, c.rate_target
            ),
        );
        line(&mut out, "connect -> CONNECTED", lat(&c.latency));
        if c.resume.count > 0 {
            line(&mut out, "connect -> resumed QUESTION", lat(&c.resume));
        }
        line(&mut out, "connect schedule lag (own)", lat(&c.own_lag));
        if let Some(a) = &self.answers {
            line(
                &mut out,
                "answers",
                format!(
                    "{:.1}/s over {:.1} s (target {:.0}/s); {} of {} due answered",
                    a.per_sec, a.window_secs, a.rate_target, a.done, a.due
                ),
            );
            line(&mut out, "answer due -> ANSWER_FEEDBACK", lat(&a.latency));
            line(&mut out, "answer sent -> ANSWER_FEEDBACK", lat(&a.service));
            line(&mut out, "answer schedule lag (own)", lat(&a.own_lag));
            line(
                &mut out,
                "answers / attempts (whole run)",
                format!(
                    "{} answers, {} attempts started, {} completed",
                    a.answers_total, a.attempts_started, a.attempts_completed
                ),
            );
        }
        let kib =
            |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{:.1} MiB", v as f64 / 1024.0));
        let m = &self.server;
        line(
            &mut out,
            "server RSS",
            format!(
                "pid {}: {} before, {} loaded, {} after",
                m.pid.map_or("?".to_string(), |p| p.to_string()),
                kib(m.rss_kib_before),
                kib(m.rss_kib_loaded),
                kib(m.rss_kib_after)
            ),
        );
        if let Some(per) = m.kib_per_socket {
            line(
                &mut out,
                "server memory per socket",
                format!("{per:.1} KiB"),
            );
        }
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        line(&mut out, "errors", errors);
        line(
            &mut out,
            "client",
            format!(
                "RLIMIT_NOFILE {}, {} source addresses, users {}-*",
                self.client.nofile_limit, self.client.source_ips, self.client.user_prefix
            ),
        );
        for w in &self.client.warnings {
            line(&mut out, "warning", w.clone());
        }
        out
    }
}
