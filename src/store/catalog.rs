//! Versioned test definitions. A version, once written, never changes, so versions are
//! cached in memory for good; "the latest version" is always read from the database, so
//! every node sees a new version at once.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use domain::TestDefinition;

use super::{Database, StoreError};

pub struct Catalog {
    db: Database,
    versions: RwLock<HashMap<(String, u32), Arc<TestDefinition>>>,
}

/// The result of storing a definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub version: u32,
    /// False when the definition equals the latest version, which is then kept.
    pub created: bool,
}

impl Catalog {
    pub fn new(db: Database) -> Self {
        Self {
            db,
            versions: RwLock::new(HashMap::new()),
        }
    }

    /// Stores `definition` (already validated) as the next version of its test, unless it
    /// is identical to the latest one.
    pub async fn put(&self, mut definition: TestDefinition) -> Result<Stored, StoreError> {
        // A concurrent writer may take the next version first; then decide again.
        for _ in 0..5 {
            let latest = self.latest(&definition.id).await?;
            if let Some(latest) = &latest {
                definition.version = latest.version;
                if **latest == definition {
                    return Ok(Stored {
                        version: latest.version,
                        created: false,
                    });
                }
            }
            definition.version = latest.map_or(1, |l| l.version + 1);
            let json = serde_json::to_value(&definition)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let inserted = match &self.db {
                Database::Sqlite(pool) => {
                    sqlx::query("insert into test_definitions (test_id, version, definition) values (?, ?, ?)")
                        .bind(&definition.id)
                        .bind(definition.version as i64)
                        .bind(&json)
                        .execute(pool)
                        .await
                        .map(|r| r.rows_affected())
                }
                Database::Postgres(pool) => {
                    sqlx::query("insert into test_definitions (test_id, version, definition) values ($1, $2, $3)")
                        .bind(&definition.id)
                        .bind(definition.version as i32)
                        .bind(&json)
                        .execute(pool)
                        .await
                        .map(|r| r.rows_affected())
                }
            };
            match inserted {
                Ok(_) => {
                    let version = definition.version;
                    self.remember(Arc::new(definition));
                    return Ok(Stored {
                        version,
                        created: true,
                    });
                }
                Err(e)
                    if e.as_database_error()
                        .is_some_and(|d| d.is_unique_violation()) =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::EventStore(
            "test definition kept changing while being stored".into(),
        ))
    }

    /// The latest version of a test, if the test exists.
    pub async fn latest(&self, test_id: &str) -> Result<Option<Arc<TestDefinition>>, StoreError> {
        let row: Option<serde_json::Value> = match &self.db {
            Database::Sqlite(pool) => {
                sqlx::query_scalar("select definition from test_definitions where test_id = ? order by version desc limit 1")
                    .bind(test_id)
                    .fetch_optional(pool)
                    .await?
            }
            Database::Postgres(pool) => {
                sqlx::query_scalar("select definition from test_definitions where test_id = $1 order by version desc limit 1")
                    .bind(test_id)
                    .fetch_optional(pool)
                    .await?
            }
        };
        row.map(|json| self.parse(json)).transpose()
    }

    /// One version of a test: the one an attempt started with.
    pub async fn version(
        &self,
        test_id: &str,
        version: u32,
    ) -> Result<Option<Arc<TestDefinition>>, StoreError> {
        if let Some(found) = self.cached(test_id, version) {
            return Ok(Some(found));
        }
        let row: Option<serde_json::Value> =
            match &self.db {
                Database::Sqlite(pool) => {
                    sqlx::query_scalar(
                        "select definition from test_definitions where test_id = ? and version = ?",
                    )
                    .bind(test_id)
                    .bind(version as i64)
                    .fetch_optional(pool)
                    .await?
                }
                Database::Postgres(pool) => sqlx::query_scalar(
                    "select definition from test_definitions where test_id = $1 and version = $2",
                )
                .bind(test_id)
                .bind(version as i32)
                .fetch_optional(pool)
                .await?,
            };
        row.map(|json| self.parse(json)).transpose()
    }

    /// The latest version of every test, ordered by id.
    pub async fn list_latest(&self) -> Result<Vec<Arc<TestDefinition>>, StoreError> {
        let sql = "select d.definition from test_definitions d
            where d.version = (select max(version) from test_definitions m where m.test_id = d.test_id)
            order by d.test_id";
        let rows: Vec<serde_json::Value> = match &self.db {
            Database::Sqlite(pool) => sqlx::query_scalar(sql).fetch_all(pool).await?,
            Database::Postgres(pool) => sqlx::query_scalar(sql).fetch_all(pool).await?,
        };
        rows.into_iter().map(|json| self.parse(json)).collect()
    }

    fn parse(&self, json: serde_json::Value) -> Result<Arc<TestDefinition>, StoreError> {
        let definition: TestDefinition = serde_json::from_value(json)
            .map_err(|e| StoreError::Corrupt(format!("test definition: {e}")))?;
        if let Some(found) = self.cached(&definition.id, definition.version) {
            return Ok(found);
        }
        let definition = Arc::new(definition);
        self.remember(definition.clone());
        Ok(definition)
    }

    fn cached(&self, test_id: &str, version: u32) -> Option<Arc<TestDefinition>> {
        let versions = self.versions.read().unwrap_or_else(|e| e.into_inner());
        versions.get(&(test_id.to_string(), version)).cloned()
    }

    fn remember(&self, definition: Arc<TestDefinition>) {
        let mut versions = self.versions.write().unwrap_or_else(|e| e.into_inner());
        versions.insert((definition.id.clone(), definition.version), definition);
    }
}
