//! Turn taking on one human's track: a turn opens with voice, survives the pauses inside a
//! sentence, and ends after a stretch of silence. Pure: time is the caller's (milliseconds on
//! the track's own clock), so every rule is tested without audio.

/// When a turn ends and what counts as one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TurnConfig {
    /// Silence after the last voiced frame that ends a turn.
    pub end_silence_ms: u64,
    /// Voiced time a turn needs to count (shorter ones are coughs and clicks, dropped).
    pub min_voiced_ms: u64,
    /// A turn longer than this is cut here and handed on (a monologue is heard in parts).
    pub max_turn_ms: u64,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            end_silence_ms: 700,
            min_voiced_ms: 250,
            max_turn_ms: 30_000,
        }
    }
}

/// A finished turn on the track's clock: from its first voiced frame to the end of its last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Turn {
    pub start_ms: u64,
    pub end_ms: u64,
    pub voiced_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TurnEvent {
    /// The turn has enough voice to be speech (it may still turn out to be a short one).
    Speaking {
        start_ms: u64,
    },
    Ended(Turn),
}

#[derive(Clone, Copy, Debug)]
struct Open {
    start_ms: u64,
    last_voiced_end_ms: u64,
    voiced_ms: u64,
    announced: bool,
}

/// One track's turns.
#[derive(Clone, Debug)]
pub struct TurnTracker {
    config: TurnConfig,
    open: Option<Open>,
}

impl TurnTracker {
    pub fn new(config: TurnConfig) -> Self {
        Self { config, open: None }
    }

    /// The frame from `start_ms`, `len_ms` long, was voiced or not.
    pub fn frame(&mut self, start_ms: u64, len_ms: u64, voiced: bool) -> Option<TurnEvent> {
        let end_ms = start_ms + len_ms;
        if voiced {
            let open = self.open.get_or_insert(Open {
                start_ms,
                last_voiced_end_ms: end_ms,
                voiced_ms: 0,
                announced: false,
            });
            open.voiced_ms += len_ms;
            open.last_voiced_end_ms = end_ms;
            if end_ms - open.start_ms >= self.config.max_turn_ms {
                return self.close();
            }
            if !open.announced && open.voiced_ms >= self.config.min_voiced_ms {
                open.announced = true;
                return Some(TurnEvent::Speaking {
                    start_ms: open.start_ms,
                });
            }
            return None;
        }
        let open = self.open?;
        if end_ms.saturating_sub(open.last_voiced_end_ms) >= self.config.end_silence_ms {
            return self.close();
        }
        None
    }

    fn close(&mut self) -> Option<TurnEvent> {
        let open = self.open.take()?;
        (open.voiced_ms >= self.config.min_voiced_ms).then_some(TurnEvent::Ended(Turn {
            start_ms: open.start_ms,
            end_ms: open.last_voiced_end_ms,
            voiced_ms: open.voiced_ms,
        }))
    }

    /// Voiced time of the turn in progress (0 between turns): what barge-in is judged on.
    pub fn voiced_ms(&self) -> u64 {
        self.open.map_or(0, |o| o.voiced_ms)
    }

    /// When the turn in progress started.
    pub fn open_since_ms(&self) -> Option<u64> {
        self.open.map(|o| o.start_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const F: u64 = 20;

    /// Feeds `pattern` (voiced or not per 20 ms frame); returns the events with their frame index.
    fn run(config: TurnConfig, pattern: &[bool]) -> Vec<(usize, TurnEvent)> {
        let mut t = TurnTracker::new(config);
        pattern
            .iter()
            .enumerate()
            .filter_map(|(i, &v)| t.frame(i as u64 * F, F, v).map(|e| (i, e)))
            .collect()
    }

    fn frames(spec: &[(bool, u64)]) -> Vec<bool> {
        spec.iter()
            .flat_map(|&(v, ms)| std::iter::repeat_n(v, (ms / F) as usize))
            .collect()
    }

    #[test]
    fn a_sentence_with_a_pause_is_one_turn_that_ends_after_the_silence() {
        let pattern = frames(&[(false, 200), (true, 800), (false, 400), (true, 600), (false, 1000)]);
        let events = run(TurnConfig::default(), &pattern);
        assert_eq!(
            events,
            vec![
                (22, TurnEvent::Speaking { start_ms: 200 }),
                (
                    134,
                    TurnEvent::Ended(Turn {
                        start_ms: 200,
                        end_ms: 2000,
                        voiced_ms: 1400
                    })
                ),
            ]
        );
        // Frame 134 ends at 2700 ms: 700 ms after the last voiced frame's end.
    }

    #[test]
    fn a_cough_is_not_a_turn() {
        let events = run(TurnConfig::default(), &frames(&[(true, 200), (false, 1000)]));
        assert!(events.is_empty());
    }

    #[test]
    fn a_monologue_is_cut_at_the_longest_turn() {
        let config = TurnConfig {
            max_turn_ms: 2000,
            ..TurnConfig::default()
        };
        let events = run(config, &frames(&[(true, 5000)]));
        let ended: Vec<_> = events
            .iter()
            .filter(|(_, e)| matches!(e, TurnEvent::Ended(_)))
            .collect();
        assert_eq!(ended.len(), 2);
        assert!(matches!(
            ended[0].1,
            TurnEvent::Ended(Turn {
                start_ms: 0,
                end_ms: 2000,
                ..
            })
        ));
    }

    proptest! {
        /// Pauses shorter than the end silence never end a turn, and every turn that ends had
        /// at least the minimum voice and ended exactly `end_silence_ms` after its last voice.
        #[test]
        fn turns_end_only_after_the_silence(
            runs in proptest::collection::vec((proptest::bool::ANY, 1u64..60), 1..40),
            end_silence_frames in 5u64..60,
        ) {
            let config = TurnConfig {
                end_silence_ms: end_silence_frames * F,
                min_voiced_ms: 100,
                max_turn_ms: u64::MAX,
            };
            let pattern: Vec<bool> = runs.iter().flat_map(|&(v, n)| std::iter::repeat_n(v, n as usize)).collect();
            for (i, event) in run(config, &pattern) {
                if let TurnEvent::Ended(turn) = event {
                    prop_assert!(turn.voiced_ms >= config.min_voiced_ms);
                    prop_assert_eq!(i as u64 * F + F - turn.end_ms, config.end_silence_ms);
                    // Every frame between the turn's last voice and its end was silent.
                    let last_voiced = (turn.end_ms / F) as usize;
                    prop_assert!(pattern[last_voiced..=i].iter().all(|v| !v));
                }
            }
        }
    }
}
