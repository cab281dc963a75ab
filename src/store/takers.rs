//! Which users' streams hold a test's events, found through the events table's `test_id`
//! index instead of by loading every stream: the users a regrade must look at (those who
//! answered the question, and those with an attempt in progress) and those with an
//! override of the test. Authoritative, unlike a
//! read model that may lag behind the last commit.

use super::{Database, StoreError};

/// The users who recorded an answer to `question_id` in an attempt of `test_id`, in id
/// order.
///
/// # Errors
/// A database error.
pub async fn answered(
    db: &Database,
    test_id: &str,
    question_id: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(match db {
        Database::Sqlite(pool) => {
            sqlx::query_scalar(
                "select distinct aggregate_id from events \
                 where test_id = ? and event_type = 'AnswerSubmitted' \
                 and json_extract(payload, '$.AnswerSubmitted.question_id') = ? \
                 order by aggregate_id",
            )
            .bind(test_id)
            .bind(question_id)
            .fetch_all(pool)
            .await?
        }
        Database::Postgres(pool) => {
            sqlx::query_scalar(
                "select distinct aggregate_id from events \
                 where test_id = $1 and event_type = 'AnswerSubmitted' \
                 and payload -> 'AnswerSubmitted' ->> 'question_id' = $2 \
                 order by aggregate_id",
            )
            .bind(test_id)
            .bind(question_id)
            .fetch_all(pool)
            .await?
        }
    })
}

/// The users with an attempt of `test_id` in progress (started, not completed), in id
/// order. An attempt whose deadline passed unrecorded still counts: its next command
/// records the expiry.
///
/// # Errors
/// A database error.
pub async fn in_progress(db: &Database, test_id: &str) -> Result<Vec<String>, StoreError> {
    // A user has at most one attempt in progress, and every completion follows its start
    // in the same stream: more starts than completions means one is open.
    users_of(
        db,
        test_id,
        "select aggregate_id from events \
         where test_id = $1 \
         and event_type in ('AssessmentStarted', 'AssessmentCompleted') \
         group by aggregate_id \
         having sum(case when event_type = 'AssessmentStarted' then 1 else -1 end) > 0 \
         order by aggregate_id",
    )
    .await
}

/// The users who ever had an override of `test_id` set (it may have been cleared since:
/// their stream says), in id order.
///
/// # Errors
/// A database error.
pub async fn with_override(db: &Database, test_id: &str) -> Result<Vec<String>, StoreError> {
    users_of(
        db,
        test_id,
        "select distinct aggregate_id from events \
         where test_id = $1 and event_type = 'OverrideSet' order by aggregate_id",
    )
    .await
}

/// The user ids `sql` selects with `test_id` bound to `$1` (`?` on SQLite).
async fn users_of(db: &Database, test_id: &str, sql: &str) -> Result<Vec<String>, StoreError> {
    Ok(match db {
        Database::Sqlite(pool) => {
            sqlx::query_scalar(&sql.replace("$1", "?"))
                .bind(test_id)
                .fetch_all(pool)
                .await?
        }
        Database::Postgres(pool) => {
            sqlx::query_scalar(sql)
                .bind(test_id)
                .fetch_all(pool)
                .await?
        }
    })
}
