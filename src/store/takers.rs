//! Which users' streams hold a test's events, found through the events table's `test_id`
//! index instead of by loading every stream: the users a regrade must look at (those who
//! answered the question) and those with an override of the test. Authoritative, unlike a
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

/// The users who ever had an override of `test_id` set (it may have been cleared since:
/// their stream says), in id order.
///
/// # Errors
/// A database error.
pub async fn with_override(db: &Database, test_id: &str) -> Result<Vec<String>, StoreError> {
    let sql = "select distinct aggregate_id from events \
               where test_id = $1 and event_type = 'OverrideSet' order by aggregate_id";
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
