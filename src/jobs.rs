//! Background jobs an admin starts and then follows (`GET /api/admin/jobs/{id}`):
//! projection rebuilds, and regrades (src/regrade.rs). Jobs live in this process; a restart forgets them (the rebuild
//! itself leaves the live view as it was unless it finished).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Running,
    Done,
    Failed,
}

/// The jobs of this process.
#[derive(Default)]
pub struct Jobs {
    jobs: Mutex<HashMap<String, Job>>,
}

impl Jobs {
    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Job>> {
        // Every update is one assignment, so a panic elsewhere cannot leave a job half-set.
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a running rebuild of `projection`, unless one is running already.
    pub fn start_rebuild(&self, projection: &str) -> Option<String> {
        let mut jobs = self.jobs();
        if jobs
            .values()
            .any(|j| j.projection == projection && j.status == JobStatus::Running)
        {
            return None;
        }
        let job_id = Uuid::now_v7().to_string();
        jobs.insert(
            job_id.clone(),
            Job {
                job_id: job_id.clone(),
                kind: "rebuild".into(),
                projection: projection.to_string(),
                status: JobStatus::Running,
                events_done: 0,
                events_total: 0,
                started_at: Utc::now(),
                finished_at: None,
                error: None,
                test_id: None,
                answers_regraded: None,
            },
        );
        Some(job_id)
    }

    /// Registers a running regrade of `test_id` over `streams` users' streams.
    pub fn start_regrade(&self, test_id: &str, streams: u64) -> String {
        let job_id = Uuid::now_v7().to_string();
        self.jobs().insert(
            job_id.clone(),
            Job {
                job_id: job_id.clone(),
                kind: "regrade".into(),
                projection: String::new(),
                status: JobStatus::Running,
                events_done: 0,
                events_total: streams,
                started_at: Utc::now(),
                finished_at: None,
                error: None,
                test_id: Some(test_id.to_string()),
                answers_regraded: Some(0),
            },
        );
        job_id
    }

    /// A regrade's progress: `streams` users' streams done, `answers` answers regraded.
    pub fn regrade_progress(&self, job_id: &str, streams: u64, answers: u64) {
        if let Some(job) = self.jobs().get_mut(job_id) {
            job.events_done = streams;
            job.answers_regraded = Some(answers);
        }
    }

    pub fn progress(&self, job_id: &str, done: u64, total: u64) {
        if let Some(job) = self.jobs().get_mut(job_id) {
            job.events_done = done;
            job.events_total = total;
        }
    }

    pub fn finish(&self, job_id: &str, result: Result<(), String>) {
        if let Some(job) = self.jobs().get_mut(job_id) {
            job.finished_at = Some(Utc::now());
            match result {
                Ok(()) => job.status = JobStatus::Done,
                Err(e) => {
                    job.status = JobStatus::Failed;
                    job.error = Some(e);
                }
            }
        }
    }

    pub fn get(&self, job_id: &str) -> Option<Job> {
        self.jobs().get(job_id).cloned()
    }

    /// Whether a rebuild of `projection` is running in this process.
    pub fn rebuilding(&self, projection: &str) -> bool {
        self.jobs()
            .values()
            .any(|j| j.projection == projection && j.status == JobStatus::Running)
    }
}

/// Starts a rebuild of `projection` in the background; `None` when one is running already.
pub fn spawn_rebuild(jobs: Arc<Jobs>, db: projections::Db, projection: &str) -> Option<String> {
    let job_id = jobs.start_rebuild(projection)?;
    let (id, name) = (job_id.clone(), projection.to_string());
    tokio::spawn(async move {
        let result = projections::rebuild::rebuild(&db, &name, |p| {
            jobs.progress(&id, p.events_done, p.events_total)
        })
        .await;
        match &result {
            Ok(report) => {
                tracing::info!(projection = %name, events = report.events, took = ?report.took, "projection rebuilt")
            }
            Err(e) => tracing::error!(projection = %name, error = %e, "projection rebuild failed"),
        }
        jobs.finish(&id, result.map(|_| ()).map_err(|e| e.to_string()));
    });
    Some(job_id)
}
