//! What an open socket is told when an admin changed its user's stream (PROTOCOL
//! section 6): `DEADLINE_CHANGED` for extra time, `SCORE_CHANGED` for a regraded answer.
//! Pure: read from the state the stream leads to, so it works whichever node recorded the
//! change (the session only learns "your stream changed").

use domain::{grading, AttemptStatus, UserStream};

use super::protocol::{rfc3339, ServerMessage};
use super::replies::Reply;

/// The admin's changes recorded after sequence `seen`, in stream order. An attempt
/// extended twice since is reported once, with its latest deadline; likewise an answer
/// regraded twice.
pub fn since(state: &UserStream, seen: usize) -> Vec<Reply> {
    let mut out = Vec::new();
    for attempt in &state.attempts {
        if let (Some(extension), Some(deadline)) = (&attempt.extension, attempt.deadline) {
            if extension.seq > seen && attempt.is_in_progress() {
                out.push(Reply::new(
                    ServerMessage::DeadlineChanged {
                        assessment_id: attempt.assessment_id.clone(),
                        deadline: rfc3339(deadline),
                        extra_secs: extension.extra_secs,
                    },
                    Some(extension.seq),
                ));
            }
        }
        let passed = match &attempt.status {
            AttemptStatus::Completed { passed, .. } => *passed,
            // Not judged yet: as it would be judged now.
            AttemptStatus::InProgress => {
                grading::passed(attempt.score, attempt.max_score, attempt.pass_ratio)
            }
        };
        for answer in &attempt.answers {
            let Some(seq) = answer.regraded_seq.filter(|s| *s > seen) else {
                continue;
            };
            out.push(Reply::new(
                ServerMessage::ScoreChanged {
                    assessment_id: attempt.assessment_id.clone(),
                    question_id: answer.question_id.clone(),
                    score: attempt.score,
                    max_score: attempt.max_score,
                    passed,
                },
                Some(seq),
            ));
        }
    }
    out.sort_by_key(|r| r.seq);
    out
}
