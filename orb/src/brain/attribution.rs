//! Who said an utterance. A brain that hears the humans mixed (the realtime service gets one input
//! stream) learns only when an utterance started and ended in that stream; the orb hears every
//! human on their own track. So each track's voiced frames (RMS above the orb's voice threshold,
//! the same test as for activity) are kept as intervals on the stream's clock, and an utterance
//! is given to the voice heard longest within it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// A stretch of the input stream, in milliseconds since it began: `[start_ms, end_ms)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    pub start_ms: u64,
    pub end_ms: u64,
}

impl Interval {
    pub fn new(start_ms: u64, end_ms: u64) -> Self {
        Self {
            start_ms,
            end_ms: end_ms.max(start_ms),
        }
    }

    fn overlap_ms(&self, other: &Interval) -> u64 {
        self.end_ms
            .min(other.end_ms)
            .saturating_sub(self.start_ms.max(other.start_ms))
    }
}

/// A second voice heard at least this long within an utterance makes it an overlap; less is a
/// cough or an "mm".
pub const OVERLAP_MIN_MS: u64 = 200;

/// The voice an utterance belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribution<S> {
    pub speaker: S,
    /// Another voice was heard for at least [`OVERLAP_MIN_MS`] of the utterance too.
    pub overlap: bool,
    /// Where the speaker's voice begins within the utterance.
    pub first_voiced_ms: u64,
}

/// The track with the most voiced time within `utterance`; ties go to the voice that started
/// first, then to the earlier track. `None` when no track was voiced in it. Each track's
/// intervals must not overlap one another (a track is voiced or not at any instant).
pub fn attribute<S: Clone>(utterance: Interval, tracks: &[(S, Vec<Interval>)]) -> Option<Attribution<S>> {
    // (voiced ms, first voiced ms, track index)
    let mut voiced: Vec<(u64, u64, usize)> = tracks
        .iter()
        .enumerate()
        .filter_map(|(i, (_, intervals))| {
            let mut total = 0;
            let mut first = None;
            for iv in intervals {
                let ms = iv.overlap_ms(&utterance);
                if ms > 0 {
                    total += ms;
                    let start = iv.start_ms.max(utterance.start_ms);
                    first = Some(first.map_or(start, |f: u64| f.min(start)));
                }
            }
            first.map(|first| (total, first, i))
        })
        .collect();
    voiced.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let &(_, first_voiced_ms, winner) = voiced.first()?;
    Some(Attribution {
        speaker: tracks[winner].0.clone(),
        overlap: voiced.get(1).is_some_and(|second| second.0 >= OVERLAP_MIN_MS),
        first_voiced_ms,
    })
}

/// How long voiced intervals are kept: longer than any utterance the service cuts, so the
/// attribution of the oldest one still pending is complete.
const KEEP: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug)]
struct Voiced {
    interval: Interval,
    /// When the interval's first frame was heard.
    heard_at: Instant,
}

/// Each human's voiced intervals on the input stream's clock.
#[derive(Debug, Default)]
pub struct VoiceTimeline {
    tracks: HashMap<Arc<str>, VecDeque<Voiced>>,
}

/// An utterance given to a human, with when it started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributed {
    pub speaker: Arc<str>,
    pub overlap: bool,
    pub started: Instant,
}

impl VoiceTimeline {
    /// `speaker` was voiced in the frame at `start_ms` of `len_ms`, heard at `heard_at`.
    pub fn voiced(&mut self, speaker: &Arc<str>, start_ms: u64, len_ms: u64, heard_at: Instant) {
        let track = self.tracks.entry(speaker.clone()).or_default();
        let end_ms = start_ms + len_ms;
        match track.back_mut() {
            Some(last) if last.interval.end_ms >= start_ms => last.interval.end_ms = last.interval.end_ms.max(end_ms),
            _ => track.push_back(Voiced {
                interval: Interval::new(start_ms, end_ms),
                heard_at,
            }),
        }
        // Forget what no utterance can still need.
        let horizon = end_ms.saturating_sub(KEEP.as_millis() as u64);
        for track in self.tracks.values_mut() {
            while track.front().is_some_and(|v| v.interval.end_ms < horizon) {
                track.pop_front();
            }
        }
        self.tracks.retain(|_, t| !t.is_empty());
    }

    /// Who said `utterance`: see [`attribute`].
    pub fn attribute(&self, utterance: Interval) -> Option<Attributed> {
        let mut tracks: Vec<(&Arc<str>, Vec<Interval>)> = self
            .tracks
            .iter()
            .map(|(s, t)| (s, t.iter().map(|v| v.interval).collect()))
            .collect();
        // A stable order, so that ties do not depend on the map's.
        tracks.sort_by(|a, b| a.0.cmp(b.0));
        let found = attribute(utterance, &tracks)?;
        let speaker = found.speaker.clone();
        let started = self.tracks[&speaker]
            .iter()
            .find(|v| v.interval.end_ms > found.first_voiced_ms)
            .map(|v| v.heard_at + Duration::from_millis(found.first_voiced_ms.saturating_sub(v.interval.start_ms)))
            .unwrap_or_else(Instant::now);
        Some(Attributed {
            speaker,
            overlap: found.overlap,
            started,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(start_ms: u64, end_ms: u64) -> Interval {
        Interval::new(start_ms, end_ms)
    }

    #[test]
    fn two_people_in_turn_each_get_their_own_utterance() {
        let tracks = vec![
            ("coach", vec![iv(0, 1800), iv(5000, 6000)]),
            ("client", vec![iv(2500, 4200)]),
        ];
        // The service's spans include some padding around the speech.
        let who = |s, e| attribute(iv(s, e), &tracks).map(|a| (a.speaker, a.overlap));
        assert_eq!(who(0, 2100), Some(("coach", false)));
        assert_eq!(who(2200, 4600), Some(("client", false)));
        assert_eq!(who(4700, 6300), Some(("coach", false)));
    }

    #[test]
    fn overlapping_speech_goes_to_the_longer_voice_and_is_marked() {
        let tracks = vec![("coach", vec![iv(0, 3000)]), ("client", vec![iv(2000, 2900)])];
        let a = attribute(iv(0, 3000), &tracks).unwrap();
        assert_eq!((a.speaker, a.overlap, a.first_voiced_ms), ("coach", true, 0));
        // Within the client's stretch both were heard alike, from the same instant: a tie goes to
        // the earlier track.
        let a = attribute(iv(2000, 2900), &tracks).unwrap();
        assert_eq!((a.speaker, a.overlap), ("coach", true));
    }

    #[test]
    fn a_short_interjection_is_not_an_overlap() {
        let tracks = vec![
            ("coach", vec![iv(0, 4000)]),
            ("client", vec![iv(1000, 1000 + OVERLAP_MIN_MS - 20)]),
        ];
        let a = attribute(iv(0, 4000), &tracks).unwrap();
        assert_eq!((a.speaker, a.overlap), ("coach", false));
    }

    #[test]
    fn voiced_time_adds_up_over_gaps() {
        // The client's three short phrases outweigh the coach's one longer one.
        let tracks = vec![
            ("coach", vec![iv(0, 700)]),
            ("client", vec![iv(800, 1100), iv(1200, 1500), iv(1600, 1900)]),
        ];
        let a = attribute(iv(0, 2000), &tracks).unwrap();
        assert_eq!((a.speaker, a.overlap, a.first_voiced_ms), ("client", true, 800));
    }

    #[test]
    fn nobody_voiced_means_nobody() {
        let tracks = vec![("coach", vec![iv(0, 100)])];
        assert_eq!(attribute(iv(200, 900), &tracks), None);
        assert_eq!(attribute::<&str>(iv(0, 900), &[]), None);
        assert_eq!(attribute(iv(50, 50), &tracks), None, "an empty span");
    }

    #[test]
    fn the_timeline_merges_frames_and_dates_the_utterance() {
        let t0 = Instant::now();
        let (coach, client): (Arc<str>, Arc<str>) = ("coach".into(), "client".into());
        let mut timeline = VoiceTimeline::default();
        for i in 0..50 {
            timeline.voiced(&coach, 1000 + i * 20, 20, t0 + Duration::from_millis(i * 20));
        }
        for i in 0..9 {
            timeline.voiced(&client, 1500 + i * 20, 20, t0 + Duration::from_millis(500 + i * 20));
        }
        assert_eq!(timeline.tracks[&coach].len(), 1, "contiguous frames are one interval");
        let a = timeline.attribute(iv(1100, 2100)).unwrap();
        assert_eq!(a.speaker, coach);
        assert!(!a.overlap, "the client's 180 ms are an interjection");
        // Voice starts at 1000 on the stream; the span starts 100 ms into it.
        assert_eq!(a.started, t0 + Duration::from_millis(100));
        // Far later, the old intervals are forgotten.
        timeline.voiced(&client, 1_000_000, 20, t0);
        assert!(!timeline.tracks.contains_key(&coach));
    }
}
