//! Person joins → AI joined the room, warm pool against cold start, in dev mode (signaling with
//! the local runtime in this process, the release `orb` binary, test-mode brain). For each of
//! `--rooms` rooms in turn a coach joins a new room over a plain WebSocket; the time is until
//! signaling tells it the AI joined. Warm: a pool of one, refilled between rooms (the report
//! measures binding, not refilling). Prints a Markdown report.
//!
//! `cargo bench -p orb --bench warm_start [-- --rooms N]`

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use orb_protocol::{ClientMessage, ParticipantType, ServerMessage, UserRole};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

#[path = "../tests/support/dev_mode.rs"]
mod dev_mode;

const WAIT: Duration = Duration::from_secs(30);

/// Joins `room` as its coach and returns how long until the AI joined.
async fn time_to_ai(url: &str, room: &str) -> Duration {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}/ws-simple/{room}"))
        .await
        .expect("signaling accepts the socket");
    let join = ClientMessage::Join {
        room_id: Some(room.to_owned()),
        user_id: Some("coach-1".into()),
        user_role: Some(UserRole::Coach),
        user_name: Some("coach-1".into()),
        participant_type: Some(ParticipantType::Human),
    };
    let started = Instant::now();
    ws.send(Message::text(serde_json::to_string(&join).unwrap()))
        .await
        .unwrap();
    let joined = async {
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Text(text) = msg else { continue };
            if let Ok(ServerMessage::UserJoined {
                participant_type: ParticipantType::Ai,
                ..
            }) = serde_json::from_str(&text)
            {
                return started.elapsed();
            }
        }
        panic!("the socket closed before the AI joined {room}");
    };
    let took = tokio::time::timeout(WAIT, joined).await.expect("the AI joined in time");
    let _ = ws.close(None).await;
    took
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

async fn run(warm: bool, rooms: usize) -> Vec<Duration> {
    let name = if warm { "warm" } else { "cold" };
    let logs = std::env::temp_dir().join(format!("orb-bench-{name}-{}", std::process::id()));
    let binary = Path::new(env!("CARGO_BIN_EXE_orb"));
    // Orbs of left rooms end after a second; the cap never queues a room.
    let extra = ["--empty-room-grace=1s", "--max-concurrent-orbs=100"];
    let (server, runtime) = dev_mode::start(usize::from(warm), &logs, binary, &extra).await;
    let url = format!("ws://{}", server.local_addr());
    let mut times = Vec::with_capacity(rooms);
    for i in 0..rooms {
        if warm {
            let deadline = Instant::now() + WAIT;
            while runtime.stats().warm_ready.load(Ordering::Relaxed) == 0 {
                assert!(Instant::now() < deadline, "the pool refilled in time");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        times.push(time_to_ai(&url, &format!("bench-{name}-{i}")).await);
    }
    let bound = runtime.stats().warm_bound.load(Ordering::Relaxed);
    assert_eq!(
        bound,
        if warm { rooms } else { 0 },
        "every {name} room took the {name} path"
    );
    dev_mode::stop(server, runtime).await;
    let _ = std::fs::remove_dir_all(&logs);
    times
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut rooms = 50;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--rooms" {
            rooms = args.next().and_then(|v| v.parse().ok()).expect("--rooms N");
        }
    }
    println!("## Person joins → AI joined ({rooms} rooms each, dev mode, release orb)\n");
    println!("| start | p50 ms | p99 ms | min ms | max ms |");
    println!("|---|---|---|---|---|");
    for warm in [false, true] {
        let mut times = run(warm, rooms).await;
        times.sort();
        println!(
            "| {} | {} | {} | {} | {} |",
            if warm { "warm (pool of 1)" } else { "cold" },
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
            ms(times[0]),
            ms(times[times.len() - 1]),
        );
    }
}
