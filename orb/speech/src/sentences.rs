//! Streaming text to speakable pieces: the language model's tokens arrive a few characters at a
//! time, and the voice should start on the first sentence while the rest is still being written.

/// Collects streamed text and hands out whole sentences.
#[derive(Debug, Default)]
pub struct SentenceSplitter {
    buffer: String,
}

/// A first piece this long is spoken at its next comma, so a long first sentence does not delay
/// the first audio.
const EARLY_CLAUSE_CHARS: usize = 60;

impl SentenceSplitter {
    /// Adds streamed text; returns the sentences it completed.
    pub fn push(&mut self, text: &str) -> Vec<String> {
        self.buffer.push_str(text);
        let mut out = Vec::new();
        while let Some(end) = self.boundary() {
            let sentence: String = self.buffer.drain(..end).collect();
            let sentence = sentence.trim();
            if !sentence.is_empty() {
                out.push(sentence.to_owned());
            }
        }
        out
    }

    /// What is left when the text ends.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buffer);
        let rest = rest.trim();
        (!rest.is_empty()).then(|| rest.to_owned())
    }

    /// Byte index just past the first sentence end followed by whitespace (or a newline).
    fn boundary(&self) -> Option<usize> {
        let mut chars = self.buffer.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            let next = chars.peek().map(|&(_, n)| n);
            let ends = match c {
                '\n' => true,
                '.' | '!' | '?' => next.is_some_and(char::is_whitespace),
                ',' | ';' | ':' => i >= EARLY_CLAUSE_CHARS && next.is_some_and(char::is_whitespace),
                _ => false,
            };
            if ends {
                return Some(i + c.len_utf8());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sentences_come_out_as_soon_as_they_end() {
        let mut s = SentenceSplitter::default();
        assert!(s.push("Hello the").is_empty());
        assert_eq!(s.push("re. How are"), vec!["Hello there."]);
        assert_eq!(s.push(" you? 3.5 is"), vec!["How are you?"]);
        assert_eq!(s.finish().as_deref(), Some("3.5 is"));
    }

    #[test]
    fn a_decimal_point_is_not_an_end() {
        let mut s = SentenceSplitter::default();
        assert!(s.push("It costs 3.50 dollars").is_empty());
    }

    proptest! {
        /// However the text is cut into pieces, the sentences put back together are the text.
        #[test]
        fn no_text_is_lost(text in "[a-z ,.!?\n]{0,200}", cuts in proptest::collection::vec(0usize..200, 0..20)) {
            let mut s = SentenceSplitter::default();
            let mut pieces = Vec::new();
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= text.len()).collect();
            cuts.sort_unstable();
            let mut at = 0;
            for c in cuts.into_iter().chain([text.len()]) {
                pieces.extend(s.push(&text[at..c]));
                at = c;
            }
            pieces.extend(s.finish());
            let squash = |t: &str| t.split_whitespace().collect::<String>();
            prop_assert_eq!(squash(&pieces.join(" ")), squash(&text));
        }
    }
}
