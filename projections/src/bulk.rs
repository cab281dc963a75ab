//! Writing many rows at once, the fastest way each backend offers: on PostgreSQL one
//! statement per batch that unnests one array per column; on SQLite multi-row `values`
//! (it has no arrays), as many rows per statement as its parameter limit allows.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, QueryBuilder, Sqlite, SqliteConnection};

use crate::assessments::{AssessmentRow, COLUMNS, ON_CONFLICT};
use crate::test_statistics::AnswerRow;

/// SQLite rows per statement: 17 parameters each stays below its 32,766.
const SQLITE_ATTEMPTS: usize = 1_500;
/// SQLite answers per statement: 5 parameters each.
const SQLITE_ANSWERS: usize = 6_000;
/// PostgreSQL rows per statement (the arrays have no parameter limit; this bounds memory).
const POSTGRES_ROWS: usize = 20_000;

/// An answer is graded once, but may be regraded (`AnswerRegraded`): the newer grade wins.
const ANSWER_CONFLICT: &str = " on conflict (user_id, assessment_id, question_id) do update set \
    score = excluded.score, max_score = excluded.max_score";

/// Inserts rows, or updates those already in the table, on an open transaction.
pub(crate) trait Bulk {
    async fn write_attempts(
        &mut self,
        table: &str,
        rows: &[&AssessmentRow],
    ) -> Result<(), sqlx::Error>;
    async fn write_answers(&mut self, table: &str, rows: &[&AnswerRow]) -> Result<(), sqlx::Error>;
}

impl Bulk for SqliteConnection {
    async fn write_attempts(
        &mut self,
        table: &str,
        rows: &[&AssessmentRow],
    ) -> Result<(), sqlx::Error> {
        for chunk in rows.chunks(SQLITE_ATTEMPTS) {
            let mut insert =
                QueryBuilder::<Sqlite>::new(format!("insert into {table} ({COLUMNS}) "));
            insert.push_values(chunk, |mut values, row| {
                values
                    .push_bind(&row.user_id)
                    .push_bind(&row.assessment_id)
                    .push_bind(&row.test_id)
                    .push_bind(row.test_version)
                    .push_bind(&row.title)
                    .push_bind(row.attempt)
                    .push_bind(&row.status)
                    .push_bind(row.answered)
                    .push_bind(row.total_questions)
                    .push_bind(row.score)
                    .push_bind(row.max_score)
                    .push_bind(row.passed)
                    .push_bind(&row.reason)
                    .push_bind(row.started_at)
                    .push_bind(row.deadline)
                    .push_bind(row.completed_at)
                    .push_bind(row.duration_secs);
            });
            insert.push(ON_CONFLICT);
            insert.build().execute(&mut *self).await?;
        }
        Ok(())
    }

    async fn write_answers(&mut self, table: &str, rows: &[&AnswerRow]) -> Result<(), sqlx::Error> {
        for chunk in rows.chunks(SQLITE_ANSWERS) {
            let mut insert = QueryBuilder::<Sqlite>::new(format!(
                "insert into {table} (user_id, assessment_id, question_id, score, max_score) "
            ));
            insert.push_values(chunk, |mut values, row| {
                values
                    .push_bind(&row.user_id)
                    .push_bind(&row.assessment_id)
                    .push_bind(&row.question_id)
                    .push_bind(row.score)
                    .push_bind(row.max_score);
            });
            insert.push(ANSWER_CONFLICT);
            insert.build().execute(&mut *self).await?;
        }
        Ok(())
    }
}

impl Bulk for PgConnection {
    async fn write_attempts(
        &mut self,
        table: &str,
        rows: &[&AssessmentRow],
    ) -> Result<(), sqlx::Error> {
        let sql = format!(
            "insert into {table} ({COLUMNS}) select * from unnest($1::text[], $2::text[], \
             $3::text[], $4::int4[], $5::text[], $6::int4[], $7::text[], $8::int4[], $9::int4[], \
             $10::float8[], $11::float8[], $12::bool[], $13::text[], $14::timestamptz[], \
             $15::timestamptz[], $16::timestamptz[], $17::float8[]){ON_CONFLICT}"
        );
        for chunk in rows.chunks(POSTGRES_ROWS) {
            let column =
                |f: fn(&AssessmentRow) -> String| chunk.iter().map(|r| f(r)).collect::<Vec<_>>();
            let ints =
                |f: fn(&AssessmentRow) -> i32| chunk.iter().map(|r| f(r)).collect::<Vec<_>>();
            let floats =
                |f: fn(&AssessmentRow) -> f64| chunk.iter().map(|r| f(r)).collect::<Vec<_>>();
            let times = |f: fn(&AssessmentRow) -> Option<DateTime<Utc>>| {
                chunk.iter().map(|r| f(r)).collect::<Vec<_>>()
            };
            sqlx::query(&sql)
                .bind(column(|r| r.user_id.clone()))
                .bind(column(|r| r.assessment_id.clone()))
                .bind(column(|r| r.test_id.clone()))
                .bind(ints(|r| r.test_version))
                .bind(column(|r| r.title.clone()))
                .bind(ints(|r| r.attempt))
                .bind(column(|r| r.status.clone()))
                .bind(ints(|r| r.answered))
                .bind(ints(|r| r.total_questions))
                .bind(floats(|r| r.score))
                .bind(floats(|r| r.max_score))
                .bind(chunk.iter().map(|r| r.passed).collect::<Vec<_>>())
                .bind(chunk.iter().map(|r| r.reason.clone()).collect::<Vec<_>>())
                .bind(chunk.iter().map(|r| r.started_at).collect::<Vec<_>>())
                .bind(times(|r| r.deadline))
                .bind(times(|r| r.completed_at))
                .bind(chunk.iter().map(|r| r.duration_secs).collect::<Vec<_>>())
                .execute(&mut *self)
                .await?;
        }
        Ok(())
    }

    async fn write_answers(&mut self, table: &str, rows: &[&AnswerRow]) -> Result<(), sqlx::Error> {
        let sql = format!(
            "insert into {table} (user_id, assessment_id, question_id, score, max_score) \
             select * from unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::float8[])\
             {ANSWER_CONFLICT}"
        );
        for chunk in rows.chunks(POSTGRES_ROWS) {
            sqlx::query(&sql)
                .bind(chunk.iter().map(|r| r.user_id.clone()).collect::<Vec<_>>())
                .bind(
                    chunk
                        .iter()
                        .map(|r| r.assessment_id.clone())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    chunk
                        .iter()
                        .map(|r| r.question_id.clone())
                        .collect::<Vec<_>>(),
                )
                .bind(chunk.iter().map(|r| r.score).collect::<Vec<_>>())
                .bind(chunk.iter().map(|r| r.max_score).collect::<Vec<_>>())
                .execute(&mut *self)
                .await?;
        }
        Ok(())
    }
}
