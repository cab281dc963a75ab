//! Background jobs an admin starts and then follows (`GET /api/admin/jobs/{id}`):
//! projection rebuilds, and regrades (src/regrade.rs).
//!
//! A job is a row of the table `jobs` (src/store/jobs.rs), written by the node that runs
//! it: inserted as it starts, its counts updated as it goes (at most every
//! [`PROGRESS_EVERY`], off the job's own path, so a rebuild of a million events never
//! waits on its record), and its end recorded (retried: an end that is lost leaves the job
//! reading as running for as long as its node lives). Every node reads the same rows, so
//! any node answers for any job, and a job outlives its node's restart as a record. The
//! work itself is not resumed: a rebuild that did not finish leaves the live view as it
//! was, and a regrade is run again by sending the same correction.
//!
//! A running job whose node is gone (no live heartbeat, src/nodes.rs: killed, or stopped)
//! is failed, "the node running it stopped (<node id>)": worked out when it is read, and
//! written back. A node that starts fails the same way the jobs left running under its own
//! id (by default a node id includes the process id, but it may be configured).
//!
//! One rebuild of a projection at a time, across nodes: a partial unique index refuses a
//! second running rebuild of a projection, once a running one of a gone node is failed.

use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use crate::store::jobs::{Counts, Job, JobStatus};
use crate::store::{self, Database, StoreError};

/// The shortest time between two progress writes of one job.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// How often the end of a job is tried before giving up (and logging it), and the first
/// wait between tries (doubled each time).
const FINISH_TRIES: u32 = 5;
const FINISH_BACKOFF: Duration = Duration::from_millis(100);

/// Why a running job of a gone node is failed.
fn stopped(node_id: &str) -> String {
    format!("the node running it stopped ({node_id})")
}

/// The jobs of every node on this database, as this node starts, reads and judges them.
pub struct Jobs {
    db: Database,
    /// This node: its jobs run here, whatever its heartbeat says.
    node_id: String,
    /// How long after its last heartbeat another node counts as gone.
    lease: Duration,
}

impl Jobs {
    pub fn new(db: Database, node_id: String, lease: Duration) -> Self {
        Self { db, node_id, lease }
    }

    /// Fails the jobs left running under this node's id, by an earlier process with it.
    /// Call once as the node starts, before it can start a job of its own.
    ///
    /// # Errors
    /// A database error.
    pub async fn fail_left_running(&self) -> Result<u64, StoreError> {
        let error = stopped(&self.node_id);
        store::jobs::mark_failed(&self.db, &self.node_id, None, &error, Utc::now()).await
    }

    /// Whether `node_id` still runs its jobs: this node, or one with a live heartbeat.
    async fn runs(&self, node_id: &str) -> Result<bool, StoreError> {
        if node_id == self.node_id {
            return Ok(true);
        }
        let live = crate::store::nodes::live(&self.db, self.lease).await?;
        Ok(live.iter().any(|n| n.node_id == node_id))
    }

    fn new_job(kind: &str, projection: &str, test_id: Option<&str>, counts: Counts) -> Job {
        Job {
            job_id: Uuid::now_v7().to_string(),
            kind: kind.into(),
            projection: projection.into(),
            status: JobStatus::Running,
            events_done: counts.events_done,
            events_total: counts.events_total,
            started_at: Utc::now(),
            finished_at: None,
            error: None,
            test_id: test_id.map(str::to_string),
            answers_regraded: counts.answers_regraded,
            open_attempts_corrected: counts.open_attempts_corrected,
        }
    }

    /// Records a running rebuild of `projection`, unless one runs already on a live node.
    ///
    /// # Errors
    /// A database error.
    pub async fn start_rebuild(&self, projection: &str) -> Result<Option<Running>, StoreError> {
        // The rebuild a gone node left running would hold the projection forever.
        for (job_id, node_id) in store::jobs::running_rebuilds(&self.db, projection).await? {
            if !self.runs(&node_id).await? {
                let error = stopped(&node_id);
                store::jobs::mark_failed(&self.db, &node_id, Some(&job_id), &error, Utc::now())
                    .await?;
            }
        }
        let job = Self::new_job("rebuild", projection, None, Counts::default());
        // The database decides between two nodes starting one at the same moment.
        if !store::jobs::insert(&self.db, &job, &self.node_id).await? {
            return Ok(None);
        }
        Ok(Some(Running::spawn(self.db.clone(), &job)))
    }

    /// Records a running regrade of `test_id` over `streams` users' streams.
    ///
    /// # Errors
    /// A database error.
    pub async fn start_regrade(&self, test_id: &str, streams: u64) -> Result<Running, StoreError> {
        let counts = Counts {
            events_total: streams,
            answers_regraded: Some(0),
            open_attempts_corrected: Some(0),
            ..Counts::default()
        };
        let job = Self::new_job("regrade", "", Some(test_id), counts);
        if !store::jobs::insert(&self.db, &job, &self.node_id).await? {
            // Only rebuilds are unique per projection, and the id is a fresh UUID.
            return Err(StoreError::Corrupt(format!(
                "the regrade job {} was refused as a duplicate",
                job.job_id
            )));
        }
        Ok(Running::spawn(self.db.clone(), &job))
    }

    /// The job `job_id`, whichever node runs it; a running job of a gone node is failed
    /// first. `None` for an unknown id, or one that is not a UUID (no job has one).
    ///
    /// # Errors
    /// A database error, or a row this build cannot read.
    pub async fn get(&self, job_id: &str) -> Result<Option<Job>, StoreError> {
        if Uuid::parse_str(job_id).is_err() {
            return Ok(None);
        }
        let Some(stored) = store::jobs::get(&self.db, job_id).await? else {
            return Ok(None);
        };
        if stored.job.status != JobStatus::Running || self.runs(&stored.node_id).await? {
            return Ok(Some(stored.job));
        }
        let (error, now) = (stopped(&stored.node_id), Utc::now());
        match store::jobs::mark_failed(&self.db, &stored.node_id, Some(job_id), &error, now).await {
            // Read again: if the job ended meanwhile (its node was slow, not gone), what
            // it recorded stands.
            Ok(_) => Ok(store::jobs::get(&self.db, job_id).await?.map(|s| s.job)),
            Err(e) => {
                tracing::warn!(job_id, error = %e, "could not mark a job of a gone node failed");
                Ok(Some(Job {
                    status: JobStatus::Failed,
                    finished_at: Some(now),
                    error: Some(error),
                    ..stored.job
                }))
            }
        }
    }

    /// Whether a rebuild of `projection` runs on a live node (this one or another).
    ///
    /// # Errors
    /// A database error.
    pub async fn rebuilding(&self, projection: &str) -> Result<bool, StoreError> {
        for (_, node_id) in store::jobs::running_rebuilds(&self.db, projection).await? {
            if self.runs(&node_id).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// A job this node runs: its progress is written behind it, its end through
/// [`Running::finish`].
pub struct Running {
    db: Database,
    job_id: String,
    counts: watch::Sender<Counts>,
    stop: CancellationToken,
    writer: JoinHandle<()>,
}

impl Running {
    fn spawn(db: Database, job: &Job) -> Self {
        let (counts, latest) = watch::channel(Counts {
            events_done: job.events_done,
            events_total: job.events_total,
            answers_regraded: job.answers_regraded,
            open_attempts_corrected: job.open_attempts_corrected,
        });
        let stop = CancellationToken::new();
        let writer = tokio::spawn(write_progress(
            db.clone(),
            job.job_id.clone(),
            latest,
            stop.clone(),
        ));
        Self {
            db,
            job_id: job.job_id.clone(),
            counts,
            stop,
            writer,
        }
    }

    pub fn id(&self) -> &str {
        &self.job_id
    }

    /// A rebuild's progress. Never waits: the latest counts are written behind the job.
    pub fn progress(&self, done: u64, total: u64) {
        self.counts.send_modify(|c| {
            c.events_done = done;
            c.events_total = total;
        });
    }

    /// A regrade's progress: `streams` users' streams done, `answers` answers regraded,
    /// `corrected` attempts in progress corrected ahead of their answer.
    pub fn regrade_progress(&self, streams: u64, answers: u64, corrected: u64) {
        self.counts.send_modify(|c| {
            c.events_done = streams;
            c.answers_regraded = Some(answers);
            c.open_attempts_corrected = Some(corrected);
        });
    }

    /// Records the job's end (`Err` with why it failed) and its final counts, trying a few
    /// times before giving up with an error in the log.
    pub async fn finish(self, result: Result<(), String>) {
        self.stop.cancel();
        // A progress write in flight lands before the end, never after it.
        let _ = self.writer.await;
        let counts = *self.counts.borrow();
        let (error, finished_at) = (result.err(), Utc::now());
        let mut wait = FINISH_BACKOFF;
        for attempt in 1..=FINISH_TRIES {
            let written = store::jobs::finish(
                &self.db,
                &self.job_id,
                counts,
                finished_at,
                error.as_deref(),
            )
            .await;
            match written {
                Ok(()) => return,
                Err(e) if attempt < FINISH_TRIES => {
                    tracing::warn!(job_id = %self.job_id, attempt, error = %e, "could not record a job's end; trying again");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(e) => {
                    tracing::error!(job_id = %self.job_id, error = %e, "could not record a job's end; it reads as running until this node stops");
                }
            }
        }
    }
}

/// Writes a job's latest counts whenever they change, at most every [`PROGRESS_EVERY`],
/// until the job finishes. A failed write is logged; the next one, or the end, catches up.
async fn write_progress(
    db: Database,
    job_id: String,
    mut counts: watch::Receiver<Counts>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = counts.changed() => if changed.is_err() { return },
        }
        let latest = *counts.borrow_and_update();
        if let Err(e) = store::jobs::progress(&db, &job_id, latest).await {
            tracing::warn!(job_id, error = %e, "could not record a job's progress");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PROGRESS_EVERY) => {}
        }
    }
}

/// Starts a rebuild of `projection` in the background; `None` when one runs already on a
/// live node.
///
/// # Errors
/// A database error; nothing was started.
pub async fn spawn_rebuild(
    jobs: &Jobs,
    db: projections::Db,
    projection: &str,
) -> Result<Option<String>, StoreError> {
    let Some(job) = jobs.start_rebuild(projection).await? else {
        return Ok(None);
    };
    let (job_id, name) = (job.id().to_string(), projection.to_string());
    tokio::spawn(async move {
        let result = projections::rebuild::rebuild(&db, &name, |p| {
            job.progress(p.events_done, p.events_total)
        })
        .await;
        match &result {
            Ok(report) => {
                tracing::info!(projection = %name, events = report.events, took = ?report.took, "projection rebuilt")
            }
            Err(e) => tracing::error!(projection = %name, error = %e, "projection rebuild failed"),
        }
        job.finish(result.map(|_| ()).map_err(|e| e.to_string()))
            .await;
    });
    Ok(Some(job_id))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// Polls until job `id` shows `want` streams done; returns when the last read that did
    /// not show it started (the write that shows it committed after that), and when it was
    /// seen.
    async fn until(jobs: &Jobs, id: &str, want: u64, mut unseen: Instant) -> (Instant, Instant) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let read_at = Instant::now();
            let job = jobs.get(id).await.unwrap().unwrap();
            if job.events_done == want {
                return (unseen, Instant::now());
            }
            unseen = read_at;
            assert!(
                Instant::now() < deadline,
                "events_done never reached {want}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Progress is written behind the job, no sooner than [`PROGRESS_EVERY`] after the
    /// write before it; the end carries the latest counts at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn progress_is_written_behind_the_job_and_throttled() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
        let db = Database::connect(&url, 2).await.unwrap();
        db.migrate().await.unwrap();
        let jobs = Jobs::new(db, "me".into(), Duration::from_secs(10));
        let job = jobs.start_regrade("exam", 10).await.unwrap();
        let id = job.id().to_string();

        let called = Instant::now();
        job.regrade_progress(1, 1, 0);
        let (first_unseen, _) = until(&jobs, &id, 1, called).await;
        job.regrade_progress(2, 1, 0);
        let (_, second_seen) = until(&jobs, &id, 2, Instant::now()).await;
        assert!(
            second_seen - first_unseen >= PROGRESS_EVERY,
            "two progress writes within {:?}",
            second_seen - first_unseen
        );

        job.regrade_progress(7, 3, 2);
        job.finish(Ok(())).await;
        let ended = jobs.get(&id).await.unwrap().unwrap();
        assert_eq!(ended.status, JobStatus::Done);
        assert_eq!(
            (
                ended.events_done,
                ended.events_total,
                ended.answers_regraded,
                ended.open_attempts_corrected
            ),
            (7, 10, Some(3), Some(2))
        );
        assert!(ended.finished_at.is_some() && ended.error.is_none());
    }
}
