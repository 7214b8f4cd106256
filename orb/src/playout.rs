//! The one outgoing audio stream: brain audio is queued per lane, mixed and Opus-encoded once
//! per 20 ms tick of a real clock, and the same packet goes to every peer. A late tick is
//! skipped (the RTP clock jumps ahead), never made up with a burst.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::warn;

use crate::audio::{Encoder, FRAME_DURATION, FRAME_SAMPLES};
use crate::media::{AudioSink, OutFrame, PeerKey};
use crate::metrics::Metrics;

/// Frames of silence after which the orb stops "speaking" (so short gaps do not flap status).
const SILENT_FRAMES_BEFORE_IDLE: u32 = 15;
/// The most audio one lane may queue (30 s); beyond that the oldest is dropped.
const MAX_LANE_SAMPLES: usize = 30 * 48_000;

pub enum PacerCmd {
    Audio {
        lane: u32,
        pcm: Vec<i16>,
        origin: Option<Instant>,
    },
    Interrupt {
        lane: u32,
    },
    AddSink {
        key: PeerKey,
        sink: AudioSink,
    },
    RemoveSink {
        key: PeerKey,
    },
}

#[derive(Default)]
struct Lane {
    samples: VecDeque<i16>,
    /// Samples taken from this lane so far, and where in that count each origin starts.
    consumed: u64,
    queued: u64,
    origins: VecDeque<(u64, Instant)>,
}

/// Mixes lanes into 20 ms frames.
#[derive(Default)]
pub struct Mixer {
    lanes: BTreeMap<u32, Lane>,
}

impl Mixer {
    pub fn push(&mut self, lane: u32, pcm: &[i16], origin: Option<Instant>) {
        let lane = self.lanes.entry(lane).or_default();
        if let Some(origin) = origin {
            lane.origins.push_back((lane.queued, origin));
        }
        lane.samples.extend(pcm);
        lane.queued += pcm.len() as u64;
        let excess = lane.samples.len().saturating_sub(MAX_LANE_SAMPLES);
        if excess > 0 {
            lane.samples.drain(..excess);
            lane.consumed += excess as u64;
        }
    }

    pub fn interrupt(&mut self, lane: u32) {
        if let Some(l) = self.lanes.get_mut(&lane) {
            l.consumed += l.samples.len() as u64;
            l.samples.clear();
            l.origins.clear();
        }
    }

    /// Fills `out` with the next mixed frame; returns whether any lane had audio, and the
    /// origins of audio that starts playing in this frame.
    pub fn next_frame(&mut self, out: &mut [i16; FRAME_SAMPLES], started: &mut Vec<Instant>) -> bool {
        let mut mix = [0i32; FRAME_SAMPLES];
        let mut active = false;
        for lane in self.lanes.values_mut() {
            let n = lane.samples.len().min(FRAME_SAMPLES);
            if n == 0 {
                continue;
            }
            active = true;
            for (m, s) in mix.iter_mut().zip(lane.samples.drain(..n)) {
                *m += i32::from(s);
            }
            lane.consumed += n as u64;
            while lane.origins.front().is_some_and(|(at, _)| *at < lane.consumed) {
                started.push(lane.origins.pop_front().expect("checked").1);
            }
        }
        self.lanes.retain(|_, l| !l.samples.is_empty() || !l.origins.is_empty());
        for (o, m) in out.iter_mut().zip(mix) {
            *o = m.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
        }
        active
    }
}

/// Runs the pacer until the command channel closes. `speaking` receives `true` when audio
/// starts playing and `false` after a short silence.
pub async fn run(mut commands: mpsc::Receiver<PacerCmd>, speaking: mpsc::Sender<bool>, metrics: Metrics) {
    let mut encoder = match Encoder::new() {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "cannot create the Opus encoder; the orb stays silent");
            while commands.recv().await.is_some() {}
            return;
        }
    };
    let mut mixer = Mixer::default();
    let mut sinks: HashMap<PeerKey, AudioSink> = HashMap::new();
    let start = Instant::now();
    let mut ticker = tokio::time::interval_at(start + FRAME_DURATION, FRAME_DURATION);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut frame_index: u64 = 0;
    let mut frame = [0i16; FRAME_SAMPLES];
    let mut started = Vec::new();
    let mut silent_frames = SILENT_FRAMES_BEFORE_IDLE;
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                None => return,
                Some(PacerCmd::Audio { lane, pcm, origin }) => mixer.push(lane, &pcm, origin),
                Some(PacerCmd::Interrupt { lane }) => mixer.interrupt(lane),
                Some(PacerCmd::AddSink { key, sink }) => { sinks.insert(key, sink); }
                Some(PacerCmd::RemoveSink { key }) => { sinks.remove(&key); }
            },
            now = ticker.tick() => {
                // Frames due by the wall clock; ticks lost to a stall advance the RTP clock.
                let due = ((now - start).as_micros() / FRAME_DURATION.as_micros()) as u64;
                let advance = due.saturating_sub(frame_index).max(1);
                frame_index = frame_index.max(due);
                let active = mixer.next_frame(&mut frame, &mut started);
                if active {
                    if silent_frames >= SILENT_FRAMES_BEFORE_IDLE {
                        let _ = speaking.try_send(true);
                    }
                    silent_frames = 0;
                } else if silent_frames < SILENT_FRAMES_BEFORE_IDLE {
                    silent_frames += 1;
                    if silent_frames == SILENT_FRAMES_BEFORE_IDLE {
                        let _ = speaking.try_send(false);
                    }
                }
                if sinks.is_empty() {
                    started.clear();
                    continue;
                }
                let payload = match encoder.encode(&frame) {
                    Ok(p) => Bytes::copy_from_slice(p),
                    Err(e) => { warn!(error = %e, "Opus encoding failed"); continue; }
                };
                let samples = (advance * FRAME_SAMPLES as u64) as u32;
                for sink in sinks.values() {
                    if sink.try_send(OutFrame { payload: payload.clone(), samples }).is_err() {
                        metrics.audio_frames_dropped.inc();
                    }
                }
                let sent_at = Instant::now();
                for origin in started.drain(..) {
                    let latency = sent_at - origin;
                    metrics.brain_latency_seconds.observe(latency.as_secs_f64());
                    metrics.last_brain_latency_us.store(latency.as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn lanes_mix_and_report_origins_when_they_start() {
        let mut m = Mixer::default();
        let t = Instant::now();
        m.push(0, &[1000; 1000], None);
        m.push(1, &[i16::MAX; 500], Some(t));
        let mut out = [0i16; FRAME_SAMPLES];
        let mut started = Vec::new();
        assert!(m.next_frame(&mut out, &mut started));
        assert_eq!(out[0], i16::MAX, "mixing saturates");
        assert_eq!(out[600], 1000);
        assert_eq!(started, [t]);
        started.clear();
        assert!(m.next_frame(&mut out, &mut started));
        assert_eq!(&out[..40], &[1000; 40]);
        assert_eq!(out[40], 0);
        assert!(!m.next_frame(&mut out, &mut started));
        assert!(started.is_empty());
    }

    #[test]
    fn interrupt_drops_queued_audio() {
        let mut m = Mixer::default();
        m.push(2, &[5; 5000], Some(Instant::now()));
        m.interrupt(2);
        let mut out = [1i16; FRAME_SAMPLES];
        let mut started = Vec::new();
        assert!(!m.next_frame(&mut out, &mut started));
        assert!(started.is_empty() && out.iter().all(|&s| s == 0));
    }

    #[tokio::test(start_paused = true)]
    async fn one_frame_per_tick_to_every_sink() {
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        let (speak_tx, mut speak_rx) = mpsc::channel(4);
        let metrics = Metrics::new();
        tokio::spawn(run(cmd_rx, speak_tx, metrics.clone()));
        let (sink, mut frames) = mpsc::channel(64);
        let key = PeerKey {
            user: Arc::from("u"),
            generation: 1,
        };
        cmd_tx.send(PacerCmd::AddSink { key: key.clone(), sink }).await.unwrap();
        cmd_tx
            .send(PacerCmd::Audio {
                lane: 0,
                pcm: vec![3000; 960 * 3],
                origin: Some(Instant::now()),
            })
            .await
            .unwrap();
        let t0 = Instant::now();
        for i in 1..=5u32 {
            let f = frames.recv().await.unwrap();
            assert_eq!(f.samples, 960);
            assert_eq!(Instant::now() - t0, FRAME_DURATION * i, "paced, not bursted");
        }
        assert_eq!(speak_rx.recv().await, Some(true));
        assert!(metrics.encode().contains("orb_brain_latency_seconds_count 1"));
        assert_eq!(speak_rx.recv().await, Some(false));
        cmd_tx.send(PacerCmd::RemoveSink { key }).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        while frames.try_recv().is_ok() {}
        drop(cmd_tx);
    }
}
