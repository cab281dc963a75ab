//! The answer-key guard: the model is told never to give the answer away, and this checks
//! that it did not. Pure: no IO, no clock.
//!
//! The model never sees the key (its prompt holds only the question as presented), so a
//! giveaway can only be a lucky or reasoned guess; the guard still refuses to pass one on.
//! It errs toward withholding: a withheld hint costs the test-taker one reply, a leaked key
//! costs the test its meaning.
//!
//! What counts as giving the answer away:
//! - **choice questions:** pointing at a correct choice ("the answer is b", "option b",
//!   "const is correct"), or naming a correct choice's text without naming every wrong
//!   choice's text too (naming them all singles none out);
//! - **free text:** any rubric keyword (matched as the grader does, anywhere in a word).
//!
//! Words that are already in the question's prompt give nothing away and are ignored.
//!
//! [`StreamGuard`] applies the check to a reply as it streams: each delta is checked with
//! everything before it, and text goes out only up to the last whole word, so a key that
//! is still being spelt out is never sent.

use domain::test_definition::{AnswerKey as KeyDefinition, QuestionDefinition, QuestionKind};

/// Recorded and sent instead of a reply that gave the answer away.
pub const SAFE_REPLY: &str = "I can't answer that without giving the answer away. \
     Ask me about an idea or a term in the question and I'll explain it.";

/// Words that, followed by a correct choice, point at it.
const POINTERS_BEFORE: [&str; 7] = [
    "answer", "option", "choice", "choose", "pick", "select", "letter",
];
/// Words that, after a correct choice, point at it.
const POINTERS_AFTER: [&str; 4] = ["correct", "right", "answer", "true"];
/// How many words after a pointer (or before it) still point.
const REACH: usize = 3;

/// What a reply must not give away about one question, taken from its definition.
#[derive(Debug, Clone, Default)]
pub struct AnswerKey {
    /// Normalised ids of the correct choices.
    ids: Vec<String>,
    /// Normalised texts of the correct choices, each as words.
    correct: Vec<Vec<String>>,
    /// Normalised texts of the wrong choices, each as words.
    wrong: Vec<Vec<String>>,
    /// Normalised rubric keywords of a free-text question.
    keywords: Vec<String>,
}

/// How a (partial) reply stands against the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Safe,
    /// It names a correct choice and not yet every wrong one: more text may balance it.
    Unsure,
    Reveals,
}

impl AnswerKey {
    /// The key of `question`, minus whatever its prompt already says.
    pub fn of(question: &QuestionDefinition) -> Self {
        let prompt = words(&question.prompt);
        let in_prompt = |phrase: &[String]| phrase.is_empty() || contains(&prompt, phrase);
        let correct_ids: Vec<&str> = match &question.answer {
            Some(KeyDefinition::One(id)) => vec![id.as_str()],
            Some(KeyDefinition::Many(ids)) => ids.iter().map(String::as_str).collect(),
            None => Vec::new(),
        };
        let mut key = AnswerKey::default();
        match question.kind {
            QuestionKind::SingleChoice | QuestionKind::MultipleChoice => {
                for choice in &question.choices {
                    let text = words(&choice.text);
                    if correct_ids.contains(&choice.id.as_str()) {
                        key.ids.extend(words(&choice.id));
                        if !in_prompt(&text) {
                            key.correct.push(text);
                        }
                    } else {
                        key.wrong.push(text);
                    }
                }
            }
            QuestionKind::FreeText => {
                let prompt_text = prompt.join(" ");
                key.keywords = question
                    .keywords
                    .iter()
                    .map(|k| words(k).join(" "))
                    .filter(|k| !k.is_empty() && !prompt_text.contains(k.as_str()))
                    .collect();
            }
        }
        key
    }

    /// How `reply` stands against the key.
    pub fn check(&self, reply: &str) -> Verdict {
        let reply = words(reply);
        let joined = reply.join(" ");
        if self.keywords.iter().any(|k| joined.contains(k.as_str())) {
            return Verdict::Reveals;
        }
        let pointed = |phrase: &[String]| -> bool {
            positions(&reply, phrase).any(|at| {
                let before = &reply[at.saturating_sub(REACH)..at];
                let end = at + phrase.len();
                let after = &reply[end..(end + REACH).min(reply.len())];
                before.iter().any(|w| POINTERS_BEFORE.contains(&w.as_str()))
                    || after.iter().any(|w| POINTERS_AFTER.contains(&w.as_str()))
            })
        };
        let ids = self.ids.iter().map(std::slice::from_ref);
        let texts = self.correct.iter().map(Vec::as_slice);
        if ids.chain(texts).any(pointed) {
            return Verdict::Reveals;
        }
        let names_correct = self.correct.iter().any(|c| contains(&reply, c));
        let names_every_wrong = self.wrong.iter().all(|w| contains(&reply, w));
        if names_correct && !names_every_wrong {
            Verdict::Unsure
        } else {
            Verdict::Safe
        }
    }

    /// True when `reply`, complete, gives the answer away.
    pub fn reveals(&self, reply: &str) -> bool {
        self.check(reply) != Verdict::Safe
    }
}

/// What to do with a streamed delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this text (possibly empty: nothing new is safe to send yet).
    Send(String),
    /// The reply gives the answer away: stop streaming it.
    Tripped,
}

/// A reply as it streams, released word by word while it stays safe.
#[derive(Debug)]
pub struct StreamGuard<'k> {
    key: Option<&'k AnswerKey>,
    text: String,
    /// Bytes of `text` already released.
    sent: usize,
    tripped: bool,
}

impl<'k> StreamGuard<'k> {
    /// `key` is `None` when there is no question to protect.
    pub fn new(key: Option<&'k AnswerKey>) -> Self {
        Self {
            key,
            text: String::new(),
            sent: 0,
            tripped: false,
        }
    }

    pub fn push(&mut self, delta: &str) -> Step {
        if self.tripped {
            return Step::Tripped;
        }
        self.text.push_str(delta);
        match self.key.map_or(Verdict::Safe, |k| k.check(&self.text)) {
            Verdict::Reveals => {
                self.tripped = true;
                Step::Tripped
            }
            // Hold everything until the reply names every wrong choice or ends.
            Verdict::Unsure => Step::Send(String::new()),
            Verdict::Safe => {
                // Up to the last whitespace: the word after it may still be growing into
                // a giveaway. And only a prefix that is safe on its own: the word that
                // balances a held choice may be the one still growing.
                let upto = self
                    .text
                    .char_indices()
                    .rfind(|(_, c)| c.is_whitespace())
                    .map_or(0, |(i, c)| i + c.len_utf8());
                let prefix_safe = self
                    .key
                    .is_none_or(|k| k.check(&self.text[..upto]) == Verdict::Safe);
                if prefix_safe {
                    Step::Send(self.release(upto))
                } else {
                    Step::Send(String::new())
                }
            }
        }
    }

    /// The reply is complete: the rest of it to send, or [`Step::Tripped`].
    pub fn finish(&mut self) -> Step {
        if self.tripped || self.key.is_some_and(|k| k.reveals(&self.text)) {
            self.tripped = true;
            return Step::Tripped;
        }
        Step::Send(self.release(self.text.len()))
    }

    /// Everything received so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn tripped(&self) -> bool {
        self.tripped
    }

    fn release(&mut self, upto: usize) -> String {
        if upto <= self.sent {
            return String::new();
        }
        let out = self.text[self.sent..upto].to_string();
        self.sent = upto;
        out
    }
}

/// Lower-case words of letters and digits; everything else separates them.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn positions<'a>(haystack: &'a [String], phrase: &'a [String]) -> impl Iterator<Item = usize> + 'a {
    let n = phrase.len();
    (0..(haystack.len() + 1).saturating_sub(n))
        .filter(move |&i| n > 0 && haystack[i..i + n] == *phrase)
}

fn contains(haystack: &[String], phrase: &[String]) -> bool {
    positions(haystack, phrase).next().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn question(json: &str) -> QuestionDefinition {
        serde_json::from_str(json).unwrap()
    }

    fn single() -> AnswerKey {
        AnswerKey::of(&question(
            r#"{"id":"q1","kind":"single_choice","prompt":"Which keyword declares a constant?",
             "choices":[{"id":"a","text":"let"},{"id":"b","text":"const"}],"answer":"b"}"#,
        ))
    }

    #[test]
    fn pointing_at_the_correct_choice_reveals_it() {
        let key = single();
        for reply in [
            "The answer is b.",
            "I'd go with option B",
            "Choose (b)!",
            "The answer is const.",
            "const is correct",
            "B is right.",
        ] {
            assert_eq!(key.check(reply), Verdict::Reveals, "{reply}");
        }
    }

    #[test]
    fn naming_only_the_correct_choice_is_withheld_but_naming_all_is_not() {
        let key = single();
        assert!(key.reveals("Think about const."));
        assert!(!key.reveals("Compare let and const: which one can never change?"));
        assert!(!key.reveals("Think about whether the value may change later."));
        // A wrong choice may be discussed; it gives nothing away.
        assert!(!key.reveals("The answer is not about syntax; option a is a binding."));
    }

    #[test]
    fn multiple_choice_guards_every_correct_choice() {
        let key = AnswerKey::of(&question(
            r#"{"id":"q2","kind":"multiple_choice","prompt":"Which are integer types?",
             "choices":[{"id":"a","text":"u8"},{"id":"b","text":"f32"},{"id":"c","text":"i64"}],
             "answer":["a","c"]}"#,
        ));
        assert!(key.reveals("u8 and i64 are integers"));
        assert!(key.reveals("pick c"));
        assert!(!key.reveals("Look at each of u8, f32 and i64: what does the letter mean?"));
    }

    #[test]
    fn free_text_keywords_are_guarded_except_those_in_the_prompt() {
        let key = AnswerKey::of(&question(
            r#"{"id":"q3","kind":"free_text","prompt":"What does the borrow checker enforce?",
             "keywords":["ownership","borrow","lifetime"]}"#,
        ));
        assert!(key.reveals("It is all about Ownership."));
        assert!(key.reveals("think of lifetimes"));
        assert!(!key.reveals("The borrow checker runs at compile time; what does it check?"));
    }

    #[test]
    fn a_stream_stops_before_the_key_is_sent() {
        let key = single();
        let mut guard = StreamGuard::new(Some(&key));
        let mut sent = String::new();
        let mut tripped = false;
        for delta in ["The ", "answer ", "is ", "co", "nst", "."] {
            match guard.push(delta) {
                Step::Send(text) => sent.push_str(&text),
                Step::Tripped => {
                    tripped = true;
                    break;
                }
            }
        }
        assert!(tripped);
        assert_eq!(sent, "The answer is ");
        assert!(!sent.to_lowercase().contains("const"));
    }

    #[test]
    fn a_balanced_reply_is_held_then_released_whole() {
        let key = single();
        let mut guard = StreamGuard::new(Some(&key));
        let mut sent = String::new();
        for delta in ["Is it ", "const ", "or ", "let?"] {
            match guard.push(delta) {
                Step::Send(text) => sent.push_str(&text),
                Step::Tripped => panic!("tripped"),
            }
            assert!(!sent.contains("const") || sent.contains("let"), "{sent}");
        }
        match guard.finish() {
            Step::Send(rest) => sent.push_str(&rest),
            Step::Tripped => panic!("tripped"),
        }
        assert_eq!(sent, "Is it const or let?");
    }

    #[test]
    fn an_unbalanced_reply_is_withheld_at_the_end() {
        let key = single();
        let mut guard = StreamGuard::new(Some(&key));
        assert_eq!(guard.push("Consider const "), Step::Send(String::new()));
        assert_eq!(guard.finish(), Step::Tripped);
    }

    #[test]
    fn without_a_key_everything_streams() {
        let mut guard = StreamGuard::new(None);
        assert_eq!(guard.push("Hello wor"), Step::Send("Hello ".into()));
        assert_eq!(guard.finish(), Step::Send("wor".into()));
        assert_eq!(guard.text(), "Hello wor");
    }
}
