//! One simulated user: its own token, its own WebSocket, the protocol as a client speaks
//! it (docs/protocol.md section 3).
//!
//! Answers are open loop: user `i` of `N` owes an answer at `begin + i/rate + k·N/rate`
//! whatever the server does. A due answer waits in a queue until the user has a question
//! to answer (the protocol allows one answer per presented question), and its latency is
//! measured from the time it was due, so a slow server shows as latency instead of as a
//! slower client. The generator's own lateness (a due answer whose question was already
//! there, sent late because this process was busy) is recorded apart as schedule lag.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::net::{self, Socket, Target};
use crate::stats::Stats;
use crate::token::Signer;

/// What every user shares.
pub struct Ctx {
    pub target: Target,
    pub signer: Signer,
    pub stats: Arc<Stats>,
    pub prefix: String,
    pub timeout: Duration,
    /// The test users start (answer and prepare modes).
    pub test_id: String,
}

/// When answers are due, sent to every user once all are connected and started.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub begin: Instant,
    pub window_start: Instant,
    pub window_end: Instant,
    /// Between two answers of one user: users / rate.
    pub interval: Duration,
    /// Between the first answers of two consecutive users: 1 / rate.
    pub stagger: Duration,
}

pub enum Mode {
    /// Connect, read CONNECTED (and the resumed QUESTION when `expect_resume`), then hold
    /// the socket until `stop` turns true.
    Hold {
        expect_resume: bool,
        stop: watch::Receiver<bool>,
    },
    /// Connect, start an attempt, wait for its QUESTION, close: a stream to resume later.
    Prepare,
    /// Connect, start an attempt, then answer on the schedule.
    Answer {
        schedule: watch::Receiver<Option<Schedule>>,
    },
}

/// How a user's session ended early; recorded as an error code.
struct Ended(String);

/// The question on screen.
struct Current {
    assessment_id: String,
    question_id: String,
    choice: String,
    shown_at: Instant,
}

/// The answer sent and not yet fed back.
struct Outstanding {
    question_id: String,
    request_id: String,
    due: Instant,
    sent_at: Instant,
}

pub fn user_id(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i}")
}

/// Runs user `i` to the end; `ready` hears once when the user is connected (and started,
/// when answering) or has failed.
pub async fn run(
    ctx: Arc<Ctx>,
    i: usize,
    connect_at: Instant,
    mode: Mode,
    ready: mpsc::UnboundedSender<bool>,
) {
    let stats = ctx.stats.clone();
    let mut ready = Some(ready);
    let mut signal = |ok: bool| {
        if let Some(tx) = ready.take() {
            let _ = tx.send(ok);
        }
    };
    sleep_until(connect_at).await;
    stats
        .connect_lag
        .record(Instant::now().saturating_duration_since(connect_at));
    let mut ws = match timeout(ctx.timeout, connect(&ctx, i, connect_at)).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(code)) => {
            stats.error(code);
            signal(false);
            return;
        }
        Err(_) => {
            stats.error("connect_timeout");
            signal(false);
            return;
        }
    };
    let result = match mode {
        Mode::Hold {
            expect_resume,
            stop,
        } => hold(&ctx, &mut ws, connect_at, expect_resume, stop, &mut signal).await,
        Mode::Prepare => prepare(&ctx, &mut ws).await.map(|()| signal(true)),
        Mode::Answer { schedule } => answer(&ctx, &mut ws, i, schedule, &mut signal).await,
    };
    if let Err(Ended(code)) = result {
        stats.error(code);
    }
    signal(false);
    let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
}

/// Opens the socket and waits for CONNECTED; the latency counts from `connect_at`.
async fn connect(ctx: &Ctx, i: usize, connect_at: Instant) -> Result<Socket, String> {
    let token = ctx
        .signer
        .sign(&user_id(&ctx.prefix, i), "taker", Duration::from_secs(3600))
        .map_err(|_| "token".to_string())?;
    let mut ws = net::connect(&ctx.target, i, &token)
        .await
        .map_err(|e| e.code())?;
    loop {
        let message = next_json(&mut ws).await.map_err(|Ended(code)| code)?;
        match kind(&message) {
            "CONNECTED" => break,
            "ERROR" => return Err(error_code(&message)),
            _ => {}
        }
    }
    ctx.stats
        .connect
        .record(Instant::now().saturating_duration_since(connect_at));
    ctx.stats.mark_connected();
    Ok(ws)
}

async fn hold(
    ctx: &Ctx,
    ws: &mut Socket,
    connect_at: Instant,
    expect_resume: bool,
    mut stop: watch::Receiver<bool>,
    signal: &mut impl FnMut(bool),
) -> Result<(), Ended> {
    if expect_resume {
        timeout(ctx.timeout, wait_for_question(ws))
            .await
            .map_err(|_| Ended("resume_timeout".into()))??;
        ctx.stats
            .resume
            .record(Instant::now().saturating_duration_since(connect_at));
    }
    signal(true);
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        tokio::select! {
            // Reading keeps the socket alive: tungstenite answers the server's pings.
            message = next_json(ws) => {
                let message = message?;
                if kind(&message) == "ERROR" {
                    ctx.stats.error(error_code(&message));
                }
            }
            changed = stop.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

async fn prepare(ctx: &Ctx, ws: &mut Socket) -> Result<(), Ended> {
    send(
        ws,
        json!({"type": "START_ASSESSMENT", "test_id": ctx.test_id, "request_id": "start"}),
    )
    .await?;
    timeout(ctx.timeout, wait_for_question(ws))
        .await
        .map_err(|_| Ended("start_timeout".into()))??;
    Ok(())
}

/// Reads until a QUESTION; an ERROR or ASSESSMENT_COMPLETED first ends the user.
async fn wait_for_question(ws: &mut Socket) -> Result<Value, Ended> {
    loop {
        let message = next_json(ws).await?;
        match kind(&message) {
            "QUESTION" => return Ok(message),
            "ERROR" => return Err(Ended(error_code(&message))),
            "ASSESSMENT_COMPLETED" => return Err(Ended("completed_before_question".into())),
            _ => {}
        }
    }
}

async fn answer(
    ctx: &Ctx,
    ws: &mut Socket,
    i: usize,
    mut schedule: watch::Receiver<Option<Schedule>>,
    signal: &mut impl FnMut(bool),
) -> Result<(), Ended> {
    let stats = &ctx.stats;
    send(
        ws,
        json!({"type": "START_ASSESSMENT", "test_id": ctx.test_id, "request_id": "start"}),
    )
    .await?;
    let first = timeout(ctx.timeout, wait_for_question(ws))
        .await
        .map_err(|_| Ended("start_timeout".into()))??;
    let mut current = question(&first, i);
    signal(true);
    let plan = loop {
        if let Some(plan) = *schedule.borrow() {
            break plan;
        }
        tokio::select! {
            changed = schedule.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            // Keep reading (pings) while the others connect.
            message = next_json(ws) => {
                let message = message?;
                if kind(&message) == "ERROR" {
                    stats.error(error_code(&message));
                }
            }
        }
    };
    let in_window = |due: Instant| due >= plan.window_start && due < plan.window_end;
    let mut next_due = plan.begin + plan.stagger.mul_f64(i as f64);
    let mut backlog: VecDeque<Instant> = VecDeque::new();
    let mut outstanding: Option<Outstanding> = None;
    let mut answers = 0u64;
    let drain_deadline = plan.window_end + ctx.timeout;
    loop {
        if outstanding.is_none() && current.is_some() && !backlog.is_empty() {
            if let (Some(due), Some(q)) = (backlog.pop_front(), current.take()) {
                let now = Instant::now();
                if in_window(due) {
                    stats
                        .answer_lag
                        .record(now.saturating_duration_since(due.max(q.shown_at)));
                }
                answers += 1;
                let request_id = format!("a{answers}");
                send(
                    ws,
                    json!({"type": "SUBMIT_ANSWER", "assessment_id": q.assessment_id,
                           "question_id": q.question_id, "answer": q.choice, "request_id": request_id}),
                )
                .await?;
                outstanding = Some(Outstanding {
                    question_id: q.question_id,
                    request_id,
                    due,
                    sent_at: now,
                });
            }
        }
        let scheduling = next_due < plan.window_end;
        if !scheduling && backlog.is_empty() && outstanding.is_none() {
            return Ok(());
        }
        tokio::select! {
            _ = sleep_until(next_due), if scheduling => {
                backlog.push_back(next_due);
                if in_window(next_due) {
                    Stats::add(&stats.answers_due);
                }
                next_due += plan.interval;
            }
            _ = sleep_until(drain_deadline), if !scheduling => {
                return Err(Ended("drain_timeout".into()));
            }
            message = next_json(ws) => {
                let message = message?;
                let now = Instant::now();
                match kind(&message) {
                    "QUESTION" => current = question(&message, i),
                    "ANSWER_FEEDBACK" => {
                        let matches = outstanding.as_ref().is_some_and(|o| {
                            message.get("question_id").and_then(Value::as_str) == Some(o.question_id.as_str())
                        });
                        if let (true, Some(o)) = (matches, outstanding.take()) {
                            Stats::add(&stats.answers_total);
                            if in_window(o.due) {
                                stats.answer.record(now.saturating_duration_since(o.due));
                                stats.answer_service.record(now.saturating_duration_since(o.sent_at));
                                Stats::add(&stats.answers_done);
                            }
                            if now >= plan.window_start && now < plan.window_end {
                                Stats::add(&stats.feedback_in_window);
                            }
                        }
                    }
                    "ASSESSMENT_STARTED" => Stats::add(&stats.attempts_started),
                    "ASSESSMENT_COMPLETED" => {
                        Stats::add(&stats.attempts_completed);
                        current = None;
                        send(ws, json!({"type": "START_ASSESSMENT", "test_id": ctx.test_id, "request_id": "start"})).await?;
                    }
                    "SESSION_REPLACED" => return Err(Ended("session_replaced".into())),
                    "ERROR" => {
                        let code = error_code(&message);
                        let request_id = message.get("request_id").and_then(Value::as_str).unwrap_or("");
                        if request_id == "start" {
                            return Err(Ended(code));
                        }
                        stats.error(code);
                        if outstanding.as_ref().is_some_and(|o| o.request_id == request_id) {
                            // The answer was refused: ask for the question on screen again.
                            outstanding = None;
                            send(ws, json!({"type": "START_ASSESSMENT", "test_id": ctx.test_id, "request_id": "start"})).await?;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The question to answer from a QUESTION message: a choice that varies by user and
/// question, so scores vary as real ones do.
fn question(message: &Value, i: usize) -> Option<Current> {
    let assessment_id = message.get("assessment_id")?.as_str()?.to_string();
    let question_id = message.get("question_id")?.as_str()?.to_string();
    let choices = message.get("choices")?.as_array()?;
    let position = message.get("position").and_then(Value::as_u64).unwrap_or(0) as usize;
    let choice = choices
        .get((i + position) % choices.len().max(1))?
        .get("id")?
        .as_str()?
        .to_string();
    Some(Current {
        assessment_id,
        question_id,
        choice,
        shown_at: Instant::now(),
    })
}

async fn send(ws: &mut Socket, message: Value) -> Result<(), Ended> {
    ws.send(Message::text(message.to_string()))
        .await
        .map_err(|_| Ended("send_failed".into()))
}

/// The next text frame as JSON; a close or a dead socket ends the user.
async fn next_json(ws: &mut Socket) -> Result<Value, Ended> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(text.as_str()).map_err(|_| Ended("bad_json".into()))
            }
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                return Err(Ended(format!("close_{code}")));
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) => return Err(Ended("socket_error".into())),
            None => return Err(Ended("socket_closed".into())),
        }
    }
}

fn kind(message: &Value) -> &str {
    message.get("type").and_then(Value::as_str).unwrap_or("")
}

fn error_code(message: &Value) -> String {
    message
        .get("code")
        .and_then(Value::as_str)
        .unwrap_or("error_without_code")
        .to_string()
}
