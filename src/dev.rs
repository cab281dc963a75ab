//! `assessd dev seed`: synthetic attempts recorded through the server's own command path,
//! so that benchmarks and manual checks run against a history that looks like a real one.
//!
//! Every command goes through [`commands::execute`] exactly as a test-taker's socket sends
//! it: the user's command lock, the live-session check, load, decide, append under
//! optimistic concurrency. Each seeded user has a session registered for the time of its
//! attempts (its own, as a socket would), takes its attempts one after the other, and
//! answers every question of each to completion. Which answers are right is drawn from a
//! random generator seeded with the user's number, so a user's answers are the same
//! whatever the concurrency and whichever run seeds it.
//!
//! Seeded users are named `seed-NNNNNNNNN` (nine digits), numbered after the seeded users
//! already in the database, so seeding again adds attempts instead of running into the
//! attempt limit of users seeded before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use domain::test_definition::{AnswerKey, QuestionDefinition};
use domain::{Answer, AttemptStatus, Outcome, QuestionKind, TestDefinition, UserCommand};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use crate::commands::{self, Origin};
use crate::state::AppState;
use crate::store::streams::Committed;
use crate::store::Database;

/// The share of answers that are right; the rest are wrong or, for free text, partly right.
const RIGHT: f64 = 0.7;
/// Mixed into every user's seed, so seeded answers differ from other uses of the number.
const SEED: u64 = 0x5eed_a55e_55d0;
/// How a seeded user's id starts; nine digits follow.
pub const USER_PREFIX: &str = "seed-";

/// What to seed.
#[derive(Debug, Clone)]
pub struct Plan {
    pub attempts: u64,
    /// `None`: as few users as the test's attempt limit allows.
    pub users: Option<u64>,
    pub concurrency: u32,
    pub test_id: String,
}

/// How far a seed has come; reported after every attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub attempts_done: u64,
    pub attempts_total: u64,
    pub events_written: u64,
}

/// What a finished seed did.
#[derive(Debug, Clone)]
pub struct Report {
    pub test_id: String,
    pub test_version: u32,
    pub attempts: u64,
    pub users: u64,
    /// The first and last seeded user.
    pub first_user: String,
    pub last_user: String,
    pub events: u64,
    pub took: Duration,
}

/// The id of seeded user number `n`.
pub fn user_id(n: u64) -> String {
    format!("{USER_PREFIX}{n:09}")
}

/// How many attempts each of `users` users takes so that they take `attempts` in all,
/// spread evenly, none over `max_attempts`.
///
/// # Errors
/// When there are more users than attempts, or too few users for the attempt limit.
pub fn attempts_per_user(
    attempts: u64,
    users: Option<u64>,
    max_attempts: u32,
) -> anyhow::Result<(u64, impl Fn(u64) -> u64)> {
    // Validation refuses a limit of 0; the domain would refuse every start.
    let max = u64::from(max_attempts);
    if max == 0 {
        anyhow::bail!("the test allows no attempt");
    }
    let users = users.unwrap_or_else(|| attempts.div_ceil(max));
    if users == 0 || users > attempts {
        anyhow::bail!("{users} users cannot take {attempts} attempts: give each at least one");
    }
    if users.saturating_mul(max) < attempts {
        anyhow::bail!(
            "{users} users can take at most {} attempts of this test ({max} each); {attempts} \
             need at least {} users",
            users * max,
            attempts.div_ceil(max)
        );
    }
    let (base, extra) = (attempts / users, attempts % users);
    Ok((users, move |i: u64| base + u64::from(i < extra)))
}

/// Records `plan`'s attempts through the command path of `state`, calling `progress` after
/// every attempt (from several tasks at once).
///
/// # Errors
/// An unknown test, a plan the test's attempt limit does not allow, or the first command
/// that fails (the attempts recorded before it stay).
pub async fn seed(
    state: &AppState,
    plan: &Plan,
    progress: impl Fn(Progress) + Send + Sync + 'static,
) -> anyhow::Result<Report> {
    let test = state
        .catalog
        .latest(&plan.test_id)
        .await?
        .with_context(|| {
            format!(
                "no test {:?} in the catalog; import it with `assessd tests import`",
                plan.test_id
            )
        })?;
    let (users, share) = attempts_per_user(plan.attempts, plan.users, test.max_attempts)?;
    let first = next_user_number(&state.db).await?;
    let last = first
        .checked_add(users - 1)
        .filter(|n| *n < 1_000_000_000)
        .context("seeded users are numbered with nine digits, and this seed would need more")?;
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let attempts_done = Arc::new(AtomicU64::new(0));
    let events = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(progress);
    let share = Arc::new(share);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..u64::from(plan.concurrency.max(1)).min(users) {
        let (state, test, next, share) = (state.clone(), test.clone(), next.clone(), share.clone());
        let (attempts_done, events, progress) =
            (attempts_done.clone(), events.clone(), progress.clone());
        let total = plan.attempts;
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= users {
                    return Ok::<_, anyhow::Error>(());
                }
                let number = first + i;
                let mut user = SeededUser::new(&state, number).await?;
                for _ in 0..share(i) {
                    let written = user.attempt(&test).await?;
                    let events_written = events.fetch_add(written, Ordering::Relaxed) + written;
                    progress(Progress {
                        attempts_done: attempts_done.fetch_add(1, Ordering::Relaxed) + 1,
                        attempts_total: total,
                        events_written,
                    });
                }
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        // The first failure stops the others: dropping the set aborts them, and a command
        // cut short commits nothing.
        joined.context("a seeding task panicked")??;
    }
    Ok(Report {
        test_id: test.id.clone(),
        test_version: test.version,
        attempts: plan.attempts,
        users,
        first_user: user_id(first),
        last_user: user_id(last),
        events: events.load(Ordering::Relaxed),
        took: started.elapsed(),
    })
}

/// The number after the highest seeded user in the database (1 in a database never seeded).
async fn next_user_number(db: &Database) -> anyhow::Result<u64> {
    // Only ids of exactly the seeded shape: a real user who happens to be called
    // `seed-something` must not move the numbering or break it.
    let highest: Option<String> = match db {
        Database::Sqlite(pool) => {
            sqlx::query_scalar(
                "select max(aggregate_id) from events where aggregate_type = 'user' \
                 and aggregate_id glob 'seed-[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]'",
            )
            .fetch_one(pool)
            .await
        }
        Database::Postgres(pool) => {
            sqlx::query_scalar(
                "select max(aggregate_id) from events where aggregate_type = 'user' \
                 and aggregate_id ~ '^seed-[0-9]{9}$'",
            )
            .fetch_one(pool)
            .await
        }
    }
    .context("Failed to look for users seeded before")?;
    let highest = highest
        .as_deref()
        .and_then(|id| id.strip_prefix(USER_PREFIX))
        .map(str::parse::<u64>)
        .transpose()
        .context("a seeded user id does not end in a number")?;
    Ok(highest.map_or(1, |n| n + 1))
}

/// One seeded user: its session, its answers.
struct SeededUser {
    state: AppState,
    user_id: String,
    session_id: Uuid,
    rng: StdRng,
}

impl SeededUser {
    /// Claims the user for its session, so its commands pass the owner check (and take the
    /// same command lock) a socket's would.
    async fn new(state: &AppState, number: u64) -> anyhow::Result<Self> {
        let user_id = user_id(number);
        let session_id = Uuid::new_v4();
        crate::ownership::take(state, &user_id, session_id)
            .await
            .with_context(|| format!("Failed to claim {user_id} for seeding"))?;
        Ok(Self {
            state: state.clone(),
            user_id,
            session_id,
            rng: StdRng::seed_from_u64(SEED ^ number),
        })
    }

    /// Starts an attempt of `test` and answers it to completion; returns the events
    /// written.
    async fn attempt(&mut self, test: &Arc<TestDefinition>) -> anyhow::Result<u64> {
        let mut order: Vec<String> = test.questions.iter().map(|q| q.id.clone()).collect();
        if test.shuffle {
            order.shuffle(&mut self.rng);
        }
        let assessment_id = Uuid::now_v7().to_string();
        let start = UserCommand::StartAssessment {
            test: test.clone(),
            assessment_id: assessment_id.clone(),
            question_order: order,
            now: Utc::now(),
        };
        let mut committed = self.execute(start).await?;
        if !matches!(&committed.outcome, Outcome::Started { .. }) {
            anyhow::bail!(
                "{}: starting {} gave {:?}, not a new attempt",
                self.user_id,
                test.id,
                committed.outcome
            );
        }
        let mut written = committed.events.len() as u64;
        // Every answer presents the next question or completes the attempt, so this ends
        // within one command per question; the bound guards against a domain that did not.
        for _ in 0..=test.questions.len() {
            let attempt = committed
                .state
                .attempt(&assessment_id)
                .with_context(|| format!("{}: attempt {assessment_id} vanished", self.user_id))?;
            if matches!(attempt.status, AttemptStatus::Completed { .. }) {
                return Ok(written);
            }
            let (presented, _) = attempt.current_question.as_ref().with_context(|| {
                format!(
                    "{}: attempt {assessment_id} shows no question",
                    self.user_id
                )
            })?;
            let question = test.question(&presented.question_id).with_context(|| {
                format!(
                    "question {} is not in test {} v{}",
                    presented.question_id, test.id, test.version
                )
            })?;
            let submit = UserCommand::SubmitAnswer {
                assessment_id: assessment_id.clone(),
                question_id: question.id.clone(),
                answer: answer(question, &mut self.rng),
                test: test.clone(),
                grading: None,
                now: Utc::now(),
            };
            committed = self.execute(submit).await?;
            written += committed.events.len() as u64;
        }
        anyhow::bail!(
            "{}: attempt {assessment_id} did not complete after every question was answered",
            self.user_id
        )
    }

    async fn execute(&self, command: UserCommand) -> anyhow::Result<Committed> {
        let origin = Origin::Session {
            session_id: self.session_id,
            request_id: None,
        };
        commands::execute(&self.state, &self.user_id, command, &origin)
            .await
            .with_context(|| format!("a command of {} failed", self.user_id))
    }
}

impl Drop for SeededUser {
    fn drop(&mut self) {
        self.state
            .registry
            .unregister(&self.user_id, self.session_id);
    }
}

/// An answer to `question`: right with probability [`RIGHT`], else a wrong one (for free
/// text, one naming only some of the keywords, maybe none).
pub fn answer(question: &QuestionDefinition, rng: &mut impl Rng) -> Answer {
    let right = rng.random_bool(RIGHT);
    let choices: Vec<String> = question.choices.iter().map(|c| c.id.clone()).collect();
    match question.kind {
        QuestionKind::SingleChoice => {
            let key = match &question.answer {
                Some(AnswerKey::One(key)) => Some(key.clone()),
                _ => None,
            };
            let wrong: Vec<&String> = choices
                .iter()
                .filter(|c| Some(*c) != key.as_ref())
                .collect();
            let chosen = match (right, key.as_ref(), wrong.as_slice()) {
                (true, Some(key), _) | (false, Some(key), []) => key.clone(),
                (false, _, wrong) if !wrong.is_empty() => {
                    wrong[rng.random_range(0..wrong.len())].clone()
                }
                // A definition without a key (validation refuses it): any choice will do.
                _ => choices.first().cloned().unwrap_or_default(),
            };
            Answer::Text(chosen)
        }
        QuestionKind::MultipleChoice => {
            let key = match &question.answer {
                Some(AnswerKey::Many(key)) => key.clone(),
                _ => Vec::new(),
            };
            if right && !key.is_empty() {
                return Answer::Choices(key);
            }
            // A non-empty selection other than the key, if a few draws find one.
            for _ in 0..8 {
                let picked: Vec<String> = choices
                    .iter()
                    .filter(|_| rng.random_bool(0.5))
                    .cloned()
                    .collect();
                if !picked.is_empty()
                    && !Answer::Choices(picked.clone()).same_as(&Answer::Choices(key.clone()))
                {
                    return Answer::Choices(picked);
                }
            }
            if key.is_empty() {
                Answer::Choices(choices.into_iter().take(1).collect())
            } else {
                Answer::Choices(key)
            }
        }
        QuestionKind::FreeText => {
            let named: Vec<&str> = question
                .keywords
                .iter()
                .filter(|_| right || rng.random_bool(0.3))
                .map(String::as_str)
                .collect();
            Answer::Text(if named.is_empty() {
                "I am not sure.".to_string()
            } else {
                format!("It is about {}.", named.join(", "))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> TestDefinition {
        crate::definitions::parse(crate::definitions::DEMO_TEST.as_bytes(), None).unwrap()
    }

    fn answers_of(number: u64, test: &TestDefinition) -> Vec<Answer> {
        let mut rng = StdRng::seed_from_u64(SEED ^ number);
        test.questions.iter().map(|q| answer(q, &mut rng)).collect()
    }

    #[test]
    fn a_users_answers_depend_on_its_number_only() {
        let test = demo();
        assert_eq!(answers_of(7, &test), answers_of(7, &test));
        assert!((1..20).any(|n| answers_of(n, &test) != answers_of(7, &test)));
    }

    #[test]
    fn answers_fit_their_questions_and_are_right_and_wrong() {
        let test = demo();
        let (mut right, mut wrong) = (0, 0);
        for number in 1..200 {
            for (question, answer) in test.questions.iter().zip(answers_of(number, &test)) {
                domain::grading::check_answer_shape(question, &answer)
                    .unwrap_or_else(|e| panic!("{}: {answer:?}: {e}", question.id));
                if domain::grading::grade(question, &answer).correct {
                    right += 1;
                } else {
                    wrong += 1;
                }
            }
        }
        let share = f64::from(right) / f64::from(right + wrong);
        assert!((0.6..0.8).contains(&share), "{right} right, {wrong} wrong");
    }

    #[test]
    fn attempts_are_spread_over_users_within_the_limit() {
        let (users, share) = attempts_per_user(10, None, 3).unwrap();
        assert_eq!(users, 4);
        assert_eq!((0..users).map(&share).collect::<Vec<_>>(), [3, 3, 2, 2]);
        let (users, share) = attempts_per_user(10, Some(10), 3).unwrap();
        assert_eq!((users, (0..users).map(&share).sum::<u64>()), (10, 10));
        assert!(attempts_per_user(10, Some(3), 3).is_err(), "9 at most");
        assert!(
            attempts_per_user(2, Some(3), 3).is_err(),
            "a user without an attempt"
        );
        assert!(attempts_per_user(5, None, 0).is_err());
    }
}
