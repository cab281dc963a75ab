//! The table `jobs`: one row per admin job, written by the node that runs it
//! (src/jobs.rs says what the rows mean and when they are written). Times are the
//! database's `timestamptz` on PostgreSQL and [`sqlite_time`] text on SQLite.

use chrono::{DateTime, Utc};

use super::audit::{parse_sqlite_time, sqlite_time};
use super::{Database, StoreError};
use serde::Serialize;
use utoipa::ToSchema;

/// A job as `GET /api/admin/jobs/{job_id}` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Job {
    pub job_id: String,
    /// What the job does, e.g. `rebuild`.
    pub kind: String,
    /// The projection it works on.
    pub projection: String,
    pub status: JobStatus,
    pub events_done: u64,
    /// The events in the history when the job started.
    pub events_total: u64,
    pub started_at: DateTime<Utc>,
    #[schema(required = true)]
    pub finished_at: Option<DateTime<Utc>>,
    /// Why a failed job failed.
    #[schema(required = true)]
    pub error: Option<String>,
    /// A regrade's test (its `projection` is empty; `events_done` and `events_total`
    /// count the users' streams regraded and to regrade).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub test_id: Option<String>,
    /// A regrade's `AnswerRegraded` events recorded so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub answers_regraded: Option<u64>,
    /// A regrade's `QuestionCorrected` events recorded so far: attempts in progress that
    /// had not answered the question, and will be graded with the correction.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub open_attempts_corrected: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Running,
    Done,
    Failed,
}

impl JobStatus {
    /// As stored in `jobs.status` (and as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [JobStatus::Running, JobStatus::Done, JobStatus::Failed]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// How far a job has come: the counts of [`Job`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub events_done: u64,
    pub events_total: u64,
    pub answers_regraded: Option<u64>,
    pub open_attempts_corrected: Option<u64>,
}

/// A job's row: the job as the API shows it, and the node that runs it.
#[derive(Debug, Clone)]
pub struct StoredJob {
    pub job: Job,
    pub node_id: String,
}

const COLUMNS: &str = "job_id, kind, projection, test_id, node_id, status, events_done, \
                       events_total, answers_regraded, open_attempts_corrected, started_at, \
                       finished_at, error";

/// A row as sqlx reads it, with the backend's time type `T`.
type Row<T> = (
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    T,
    Option<T>,
    Option<String>,
);

fn count(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn counted(value: i64, column: &str, job_id: &str) -> Result<u64, StoreError> {
    u64::try_from(value)
        .map_err(|_| StoreError::Corrupt(format!("job {job_id:?}: {column} is {value}")))
}

fn stored<T>(
    row: Row<T>,
    time: impl Fn(T) -> Result<DateTime<Utc>, StoreError>,
) -> Result<StoredJob, StoreError> {
    let (
        job_id,
        kind,
        projection,
        test_id,
        node_id,
        status,
        done,
        total,
        answers,
        corrected,
        started_at,
        finished_at,
        error,
    ) = row;
    let status = JobStatus::parse(&status)
        .ok_or_else(|| StoreError::Corrupt(format!("job {job_id:?}: status {status:?}")))?;
    let job = Job {
        events_done: counted(done, "events_done", &job_id)?,
        events_total: counted(total, "events_total", &job_id)?,
        answers_regraded: answers
            .map(|a| counted(a, "answers_regraded", &job_id))
            .transpose()?,
        open_attempts_corrected: corrected
            .map(|c| counted(c, "open_attempts_corrected", &job_id))
            .transpose()?,
        started_at: time(started_at)?,
        finished_at: finished_at.map(&time).transpose()?,
        kind,
        projection,
        status,
        error,
        test_id,
        job_id,
    };
    Ok(StoredJob { job, node_id })
}

/// Records `job`, run by `node_id`. `false` when the database refuses it because a rebuild
/// of the same projection is running (the partial unique index `jobs_one_running_rebuild`;
/// a job id is a fresh UUID, so no other unique key can refuse it).
///
/// # Errors
/// A database error.
pub async fn insert(db: &Database, job: &Job, node_id: &str) -> Result<bool, StoreError> {
    let sql = format!(
        "insert into jobs ({COLUMNS}) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    );
    macro_rules! insert {
        ($pool:expr, $time:expr) => {
            sqlx::query(&sql)
                .bind(&job.job_id)
                .bind(&job.kind)
                .bind(&job.projection)
                .bind(&job.test_id)
                .bind(node_id)
                .bind(job.status.as_str())
                .bind(count(job.events_done))
                .bind(count(job.events_total))
                .bind(job.answers_regraded.map(count))
                .bind(job.open_attempts_corrected.map(count))
                .bind($time(job.started_at))
                .bind(job.finished_at.map($time))
                .bind(&job.error)
                .execute($pool)
                .await
                .map(|_| ())
        };
    }
    let inserted = match db {
        Database::Sqlite(pool) => insert!(pool, sqlite_time),
        Database::Postgres(pool) => insert!(pool, std::convert::identity::<DateTime<Utc>>),
    };
    match inserted {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Sets a running job's counts.
///
/// # Errors
/// A database error.
pub async fn progress(db: &Database, job_id: &str, counts: Counts) -> Result<(), StoreError> {
    let sql = "update jobs set events_done = $2, events_total = $3, answers_regraded = $4, \
               open_attempts_corrected = $5 where job_id = $1";
    macro_rules! update {
        ($pool:expr) => {
            sqlx::query(sql)
                .bind(job_id)
                .bind(count(counts.events_done))
                .bind(count(counts.events_total))
                .bind(counts.answers_regraded.map(count))
                .bind(counts.open_attempts_corrected.map(count))
                .execute($pool)
                .await
                .map(|_| ())?
        };
    }
    match db {
        Database::Sqlite(pool) => update!(pool),
        Database::Postgres(pool) => update!(pool),
    };
    Ok(())
}

/// Records how a job ended, with its final counts.
///
/// # Errors
/// A database error.
pub async fn finish(
    db: &Database,
    job_id: &str,
    counts: Counts,
    finished_at: DateTime<Utc>,
    error: Option<&str>,
) -> Result<(), StoreError> {
    let status = if error.is_some() {
        JobStatus::Failed
    } else {
        JobStatus::Done
    };
    let sql = "update jobs set status = $2, finished_at = $3, error = $4, events_done = $5, \
               events_total = $6, answers_regraded = $7, open_attempts_corrected = $8 \
               where job_id = $1";
    macro_rules! update {
        ($pool:expr, $time:expr) => {
            sqlx::query(sql)
                .bind(job_id)
                .bind(status.as_str())
                .bind($time)
                .bind(error)
                .bind(count(counts.events_done))
                .bind(count(counts.events_total))
                .bind(counts.answers_regraded.map(count))
                .bind(counts.open_attempts_corrected.map(count))
                .execute($pool)
                .await
                .map(|_| ())?
        };
    }
    match db {
        Database::Sqlite(pool) => update!(pool, sqlite_time(finished_at)),
        Database::Postgres(pool) => update!(pool, finished_at),
    };
    Ok(())
}

/// The job `job_id`, if there is one.
///
/// # Errors
/// A database error, or a row this build cannot read.
pub async fn get(db: &Database, job_id: &str) -> Result<Option<StoredJob>, StoreError> {
    let sql = format!("select {COLUMNS} from jobs where job_id = $1");
    match db {
        Database::Sqlite(pool) => sqlx::query_as::<_, Row<String>>(&sql)
            .bind(job_id)
            .fetch_optional(pool)
            .await?
            .map(|row| stored(row, |t| parse_sqlite_time(&t)))
            .transpose(),
        Database::Postgres(pool) => sqlx::query_as::<_, Row<DateTime<Utc>>>(&sql)
            .bind(job_id)
            .fetch_optional(pool)
            .await?
            .map(|row| stored(row, Ok))
            .transpose(),
    }
}

/// The running rebuilds of `projection` (at most one, by the unique index), as
/// `(job_id, node_id)`.
///
/// # Errors
/// A database error.
pub async fn running_rebuilds(
    db: &Database,
    projection: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    let sql = "select job_id, node_id from jobs \
               where projection = $1 and status = 'running' and kind = 'rebuild'";
    Ok(match db {
        Database::Sqlite(pool) => sqlx::query_as(sql).bind(projection).fetch_all(pool).await?,
        Database::Postgres(pool) => sqlx::query_as(sql).bind(projection).fetch_all(pool).await?,
    })
}

/// Marks the running job `job_id` of `node_id` (or, without a `job_id`, every running job
/// of `node_id`) as failed with `error`. A job that has ended meanwhile keeps its end.
/// Returns how many jobs it marked.
///
/// # Errors
/// A database error.
pub async fn mark_failed(
    db: &Database,
    node_id: &str,
    job_id: Option<&str>,
    error: &str,
    at: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let mut sql = "update jobs set status = 'failed', finished_at = $2, error = $3 \
                   where node_id = $1 and status = 'running'"
        .to_string();
    if job_id.is_some() {
        sql.push_str(" and job_id = $4");
    }
    macro_rules! update {
        ($pool:expr, $time:expr) => {{
            let mut query = sqlx::query(&sql).bind(node_id).bind($time).bind(error);
            if let Some(job_id) = job_id {
                query = query.bind(job_id);
            }
            query.execute($pool).await?.rows_affected()
        }};
    }
    Ok(match db {
        Database::Sqlite(pool) => update!(pool, sqlite_time(at)),
        Database::Postgres(pool) => update!(pool, at),
    })
}
