//! What the local brain remembers of the call and when it speaks: the transcript as chat
//! messages under the instructions, trimmed to the model's context; whether a line addresses the
//! orb; and what of an interrupted answer was actually heard.

use crate::llm::{ChatMessage, Role};

/// When the orb answers a finished turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerPolicy {
    /// Only a turn that names the orb (one of its names, as a word): coach and client talk to
    /// each other without it cutting in.
    WhenAddressed,
    /// Every turn.
    Always,
}

/// One remembered line.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Line {
    role: Role,
    text: String,
}

#[derive(Clone, Debug)]
pub struct Conversation {
    instructions: String,
    names: Vec<String>,
    policy: AnswerPolicy,
    lines: Vec<Line>,
    /// Lines dropped from the front to fit the context (said in the prompt).
    dropped: usize,
    /// A summary of the call so far, standing in for the dropped lines.
    earlier: Option<String>,
}

/// Whether `text` names the orb: one of `names` appears as a whole word (case and punctuation
/// ignored), so "orb" matches "Hey, Orb!" and not "absorb".
pub fn addressed(text: &str, names: &[String]) -> bool {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    names.iter().any(|name| {
        let name: Vec<String> = name.split_whitespace().map(str::to_lowercase).collect();
        !name.is_empty() && words.windows(name.len()).any(|w| w == name.as_slice())
    })
}

impl Conversation {
    pub fn new(instructions: impl Into<String>, names: Vec<String>, policy: AnswerPolicy) -> Self {
        Self {
            instructions: instructions.into(),
            names,
            policy,
            lines: Vec::new(),
            dropped: 0,
            earlier: None,
        }
    }

    /// The call so far in a few words (the rolling summary's latest), shown in place of the lines
    /// the context no longer holds: trimmed, a long call is summarised, not forgotten.
    pub fn set_earlier(&mut self, summary: Option<String>) {
        self.earlier = summary.filter(|s| !s.trim().is_empty());
    }

    /// The session's context changed the instructions (a warm orb learns its room late).
    pub fn set_instructions(&mut self, instructions: impl Into<String>) {
        self.instructions = instructions.into();
    }

    /// A human said `text`; `who` names them for the model (`coach`, `client`). Answers whether
    /// the orb should answer it.
    pub fn heard(&mut self, who: &str, text: &str) -> bool {
        self.lines.push(Line {
            role: Role::User,
            text: format!("{who}: {text}"),
        });
        match self.policy {
            AnswerPolicy::Always => true,
            AnswerPolicy::WhenAddressed => addressed(text, &self.names),
        }
    }

    /// The orb said `text` (all of it, or what was heard before it was interrupted).
    pub fn said(&mut self, text: &str) {
        if !text.trim().is_empty() {
            self.lines.push(Line {
                role: Role::Assistant,
                text: text.trim().to_owned(),
            });
        }
    }

    /// The orb's last line was cut off: it keeps only `heard` of it (nothing if none was heard).
    pub fn revise_last_said(&mut self, heard: &str) {
        if let Some(i) = self.lines.iter().rposition(|l| l.role == Role::Assistant) {
            if heard.trim().is_empty() {
                self.lines.remove(i);
            } else {
                self.lines[i].text = heard.trim().to_owned();
            }
        }
    }

    /// The messages for the next answer: the instructions, then as many of the latest lines as
    /// fit in `budget` tokens by `count` (older lines are dropped, and the model is told so, with
    /// the summary of the call so far when there is one).
    pub fn messages(&mut self, budget: usize, count: impl Fn(&str) -> usize) -> Vec<ChatMessage> {
        let earlier = self.earlier.as_deref();
        let system = |dropped: usize, instructions: &str| match (dropped, earlier) {
            (0, _) => instructions.to_owned(),
            (_, None) => {
                format!("{instructions}\n\n(The call has gone on for a while; its earliest lines are not shown.)")
            }
            (_, Some(summary)) => format!(
                "{instructions}\n\n(The call has gone on for a while; its earliest lines are not shown. \
                 So far, in short: {summary})"
            ),
        };
        let mut used = count(&system(1, &self.instructions));
        let mut keep = 0;
        for line in self.lines.iter().rev() {
            // Each message also carries the template's few tokens of framing.
            let cost = count(&line.text) + 8;
            if used + cost > budget {
                break;
            }
            used += cost;
            keep += 1;
        }
        let drop = self.lines.len() - keep;
        self.dropped += drop;
        self.lines.drain(..drop);
        let mut messages = vec![ChatMessage::new(Role::System, system(self.dropped, &self.instructions))];
        messages.extend(self.lines.iter().map(|l| ChatMessage::new(l.role, l.text.clone())));
        messages
    }
}

/// The part of an answer a listener heard when it was cut off `heard_ms` into playing: whole
/// sentences played, then the share of the next one's words its played time covers.
pub fn heard_part(sentences: &[(String, u64)], heard_ms: u64) -> String {
    let mut heard = Vec::new();
    let mut at = 0;
    for (text, ms) in sentences {
        if at + ms <= heard_ms {
            heard.push(text.clone());
            at += ms;
            continue;
        }
        let words: Vec<&str> = text.split_whitespace().collect();
        let share = (heard_ms.saturating_sub(at)) as f64 / (*ms).max(1) as f64;
        let n = (words.len() as f64 * share).floor() as usize;
        if n > 0 {
            heard.push(format!("{}…", words[..n].join(" ")));
        }
        break;
    }
    heard.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["orb".into(), "coach bot".into()]
    }

    #[test]
    fn a_line_addresses_the_orb_only_by_a_whole_name() {
        assert!(addressed("Hey, Orb! What do you think?", &names()));
        assert!(addressed("ask the coach bot", &names()));
        assert!(!addressed("That will absorb the cost.", &names()));
        assert!(!addressed("my coach said so", &names()));
    }

    #[test]
    fn coach_and_client_talk_without_the_orb_answering() {
        let mut c = Conversation::new("Be brief.", names(), AnswerPolicy::WhenAddressed);
        assert!(!c.heard("coach", "How was your week?"));
        assert!(!c.heard("client", "Busy, but good."));
        assert!(c.heard("coach", "Orb, can you suggest a goal?"));
        let m = c.messages(10_000, |t| t.len() / 4);
        assert_eq!(m.len(), 4);
        assert_eq!(m[3].content, "coach: Orb, can you suggest a goal?");
    }

    #[test]
    fn the_oldest_lines_go_when_the_context_is_full_and_the_model_is_told() {
        let mut c = Conversation::new("Be brief.", names(), AnswerPolicy::Always);
        for i in 0..100 {
            c.heard("client", &format!("line number {i} of a long call"));
            c.said("Noted.");
        }
        let count = |t: &str| t.split_whitespace().count();
        let m = c.messages(200, count);
        let total: usize = m.iter().map(|x| count(&x.content) + 8).sum();
        assert!(total <= 200 + 8, "{total}");
        assert!(m[0].content.contains("earliest lines are not shown"));
        assert_eq!(m.last().unwrap().content, "Noted.");
        assert!(m[1..].iter().all(|x| !x.content.contains("number 0 ")));
    }

    #[test]
    fn dropped_lines_are_stood_in_for_by_the_summary_so_far() {
        let mut c = Conversation::new("Be brief.", names(), AnswerPolicy::Always);
        c.set_earlier(Some("topics: sleep, a morning routine; progress: a 7 am alarm".into()));
        let count = |t: &str| t.split_whitespace().count();
        c.heard("client", "I slept badly.");
        let short = c.messages(200, count);
        assert_eq!(short[0].content, "Be brief.", "nothing dropped, nothing summarised");
        for i in 0..100 {
            c.heard("client", &format!("line number {i} of a long call"));
            c.said("Noted.");
        }
        let m = c.messages(200, count);
        let total: usize = m.iter().map(|x| count(&x.content) + 8).sum();
        assert!(total <= 200 + 8, "the summary counts against the budget: {total}");
        assert!(m[0].content.contains("a morning routine"), "{}", m[0].content);
        c.set_earlier(Some("  ".into()));
        assert!(c.messages(200, count)[0].content.ends_with("are not shown.)"));
    }

    #[test]
    fn an_interrupted_answer_keeps_what_was_heard() {
        let s = vec![
            ("First sentence here.".to_owned(), 1000),
            ("Then four more words.".to_owned(), 1000),
        ];
        assert_eq!(heard_part(&s, 2500), "First sentence here. Then four more words.");
        assert_eq!(heard_part(&s, 1500), "First sentence here. Then four…");
        assert_eq!(heard_part(&s, 900), "First sentence…");
        assert_eq!(heard_part(&s, 100), "");
    }
}
