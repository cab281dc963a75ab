//! The offline tutor behind `CHAT_MESSAGE`: it helps the test-taker think without revealing
//! an answer, with canned, deterministic guidance. It answers whenever no AI provider
//! profile applies; a model's reply streams instead through [`crate::ai`] and
//! [`crate::ws::chat`], which need a task and a guard this one-shot trait does not.

use async_trait::async_trait;
use domain::{PresentedQuestion, QuestionKind};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TutorError {
    #[error("the tutor is unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Tutor: Send + Sync {
    /// Recorded in `ChatExchanged::tutor`.
    fn name(&self) -> &str;

    /// A reply to `text`, about `question` when one is on screen. It sees only the question
    /// as presented, never the answer key, so it cannot reveal it.
    async fn reply(
        &self,
        question: Option<&PresentedQuestion>,
        text: &str,
    ) -> Result<String, TutorError>;
}

/// Canned guidance by question kind; no network, same reply for the same input.
pub struct OfflineTutor;

#[async_trait]
impl Tutor for OfflineTutor {
    fn name(&self) -> &str {
        "offline_tutor"
    }

    async fn reply(
        &self,
        question: Option<&PresentedQuestion>,
        _text: &str,
    ) -> Result<String, TutorError> {
        let Some(q) = question else {
            return Ok(
                "I'm your tutor. Start a test and ask me about the question on screen: \
                I'll help you think it through, but I won't give the answer away."
                    .to_string(),
            );
        };
        let guidance = match q.kind {
            QuestionKind::SingleChoice => {
                "Exactly one choice is right. Rule out the choices you are sure are wrong, \
                 then weigh the rest against the exact wording of the question."
            }
            QuestionKind::MultipleChoice => {
                "More than one choice may be right, and only the exact set earns the points. \
                 Judge each choice on its own: is this statement true for the question asked?"
            }
            QuestionKind::FreeText => {
                "Answer in your own words. Name the key ideas the question is about and say \
                 how they relate; a short, precise answer beats a long vague one."
            }
        };
        Ok(format!(
            "About question {} (\"{}\"): {guidance} I can't tell you the answer, but ask me \
             about any term you are unsure of.",
            q.position, q.prompt
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::PresentedChoice;

    #[tokio::test]
    async fn the_offline_tutor_does_not_reveal_the_choices() {
        let question = PresentedQuestion {
            question_id: "q1".into(),
            position: 1,
            kind: QuestionKind::SingleChoice,
            prompt: "Which keyword declares a constant?".into(),
            choices: vec![
                PresentedChoice {
                    id: "a".into(),
                    text: "let".into(),
                },
                PresentedChoice {
                    id: "b".into(),
                    text: "const".into(),
                },
            ],
            points: 1.0,
        };
        let reply = OfflineTutor
            .reply(Some(&question), "what's the answer?")
            .await
            .unwrap();
        assert!(reply.contains("question 1"));
        assert!(
            !reply.contains("const\"") && !reply.contains(" const "),
            "{reply}"
        );
        assert!(!reply.contains("let"), "{reply}");
    }
}
