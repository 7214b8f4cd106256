//! Relay benchmark (a report, not a test): starts the real `orb-signaling` binary, connects
//! ~1000 WebSocket clients on loopback (3 per room), and has every client send targeted
//! `ice-candidate` messages to a peer at a fixed total rate, stepping the rate up. Each message
//! carries its send time; the receiver computes the end-to-end relay latency (client → server →
//! client, load generator included). Reports p50/p99/max per step, the highest sustained rate
//! with p99 under the limit, and the server's peak RSS and CPU time.
//!
//! Run: `cargo bench -p orb-signaling --bench relay` (options, after `--`: `--conns 999`,
//! `--step-secs 5`, `--server-threads 2`, `--client-threads 2`).

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::SinkExt;
use futures::stream::{SplitSink, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Sink = SplitSink<Ws, Message>;

/// The p99 above which a rate no longer counts as sustained.
const P99_LIMIT: Duration = Duration::from_millis(50);
const RATES: [u64; 10] = [
    18_000, 30_000, 50_000, 75_000, 100_000, 125_000, 150_000, 175_000, 200_000, 250_000,
];
/// Short ticks keep the offered load smooth; long ones would send synchronized bursts that
/// measure queueing in the load generator rather than relay latency.
const PACER_TICK: Duration = Duration::from_millis(1);
const PACERS: usize = 4;

struct Options {
    conns: usize,
    step_secs: u64,
    /// Worker threads of the server (`TOKIO_WORKER_THREADS`) and of the load generator.
    server_threads: usize,
    client_threads: usize,
}

fn options() -> Options {
    let mut o = Options {
        conns: 999,
        step_secs: 5,
        server_threads: 2,
        client_threads: 2,
    };
    let args: Vec<String> = std::env::args().collect();
    for w in args.windows(2) {
        match w[0].as_str() {
            "--conns" => o.conns = w[1].parse().expect("--conns N"),
            "--step-secs" => o.step_secs = w[1].parse().expect("--step-secs N"),
            "--server-threads" => o.server_threads = w[1].parse().expect("--server-threads N"),
            "--client-threads" => o.client_threads = w[1].parse().expect("--client-threads N"),
            _ => {}
        }
    }
    o.conns -= o.conns % 3;
    o
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(threads: usize) -> Server {
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_orb-signaling"))
        .args(["--listen", &addr.to_string(), "--auth", "none", "--orb-runtime", "none"])
        // The benchmark measures the relay path, not the per-client limits.
        .args(["--max-messages-per-second", "1000000", "--send-queue", "8192"])
        .args(["--idle-socket-timeout", "10m", "--max-participants-per-room", "3"])
        .env("RUST_LOG", "warn")
        .env("TOKIO_WORKER_THREADS", threads.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start orb-signaling (build it with cargo bench)");
    Server { child, addr }
}

/// Peak RSS (VmHWM) and CPU seconds of a process, from /proc.
fn proc_stats(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kib = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (hwm_kib, ticks / 100.0)
}

/// Shared by the readers: the current measurement window and the latencies seen in it.
struct Recorder {
    epoch: Instant,
    window: Mutex<(u64, u64)>,
    samples: Mutex<Vec<u32>>,
    received: AtomicU64,
    closed: AtomicBool,
}

impl Recorder {
    fn record(&self, sent_us: u64) {
        let now_us = self.epoch.elapsed().as_micros() as u64;
        self.received.fetch_add(1, Ordering::Relaxed);
        let (from, to) = *self.window.lock().unwrap();
        if sent_us >= from && sent_us < to {
            let latency = now_us.saturating_sub(sent_us).min(u64::from(u32::MAX)) as u32;
            self.samples.lock().unwrap().push(latency);
        }
    }
}

/// The send time a relayed frame carries in its `"t"` field, without a full JSON parse.
fn sent_at(text: &str) -> Option<u64> {
    let start = text.find("\"t\":")? + 4;
    let digits: String = text[start..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

async fn connect(addr: SocketAddr, room: usize, user: usize) -> Ws {
    let url = format!("ws://{addr}/ws-simple/bench-{room}");
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .expect("connect");
    let join = format!(
        r#"{{"type":"join","roomId":"bench-{room}","userId":"u{user}","userRole":"client","participantType":"human"}}"#
    );
    ws.send(Message::text(join)).await.unwrap();
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str().contains("peer-discovery") => return ws,
            Some(Ok(_)) => {}
            other => panic!("join failed: {other:?}"),
        }
    }
}

/// One pacer owns a share of the clients' sinks and sends its share of the rate, spreading the
/// messages over its clients round-robin.
async fn pace(
    mut sinks: Vec<(Sink, String)>,
    rate: Arc<AtomicU64>,
    total_conns: usize,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) {
    let share = sinks.len() as f64 / total_conns as f64;
    let mut credit = 0.0f64;
    let mut next = 0usize;
    let mut last = Instant::now();
    let mut tick = tokio::time::interval(PACER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut touched = vec![false; sinks.len()];
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let now = Instant::now();
        credit += rate.load(Ordering::Relaxed) as f64 * share * now.duration_since(last).as_secs_f64();
        last = now;
        let due = credit.floor() as usize;
        credit -= due as f64;
        touched.iter_mut().for_each(|t| *t = false);
        for _ in 0..due {
            let (sink, peer) = &mut sinks[next];
            let t = recorder.epoch.elapsed().as_micros();
            let frame = format!(
                r#"{{"type":"ice-candidate","toId":"{peer}","candidate":{{"candidate":"candidate:1 1 udp 2122260223 10.0.0.2 54321 typ host","sdpMid":"0","sdpMLineIndex":0}},"t":{t}}}"#
            );
            if sink.feed(Message::text(frame)).await.is_err() {
                recorder.closed.store(true, Ordering::Relaxed);
            }
            touched[next] = true;
            next = (next + 1) % sinks.len();
        }
        for (i, (sink, _)) in sinks.iter_mut().enumerate() {
            if touched[i] && sink.flush().await.is_err() {
                recorder.closed.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// The server's own relay latency histogram (cumulative buckets by upper bound, in seconds).
async fn server_histogram(addr: SocketAddr) -> Vec<(f64, u64)> {
    let Ok((_, buf)) = orb_telemetry::probe::get(addr, "/metrics", Duration::from_secs(30)).await else {
        return vec![];
    };
    buf.lines()
        .filter_map(|l| l.strip_prefix("orb_signaling_relay_latency_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, rest) = l.split_once("\"}")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, rest.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// The bucket bound below which `p` of the observations between two scrapes fall.
fn histogram_quantile(before: &[(f64, u64)], after: &[(f64, u64)], p: f64) -> f64 {
    let diff: Vec<(f64, u64)> = after
        .iter()
        .map(|(le, n)| (*le, n - before.iter().find(|(l, _)| l == le).map_or(0, |(_, m)| *m)))
        .collect();
    let total = diff.last().map_or(0, |(_, n)| *n);
    let want = (total as f64 * p).ceil() as u64;
    diff.iter().find(|(_, n)| *n >= want).map_or(f64::NAN, |(le, _)| *le)
}

fn percentile(sorted: &[u32], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Duration::from_micros(u64::from(sorted[i]))
}

fn main() {
    let opts = options();
    let server = start_server(opts.server_threads);
    let pid = server.child.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.client_threads)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Wait for the listener.
        for _ in 0..200 {
            if TcpStream::connect(server.addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let recorder = Arc::new(Recorder {
            epoch: Instant::now(),
            window: Mutex::new((0, 0)),
            samples: Mutex::new(Vec::new()),
            received: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        let started = Instant::now();
        let mut sinks = Vec::with_capacity(opts.conns);
        let rooms = opts.conns / 3;
        for chunk in (0..opts.conns).collect::<Vec<_>>().chunks(60) {
            let joins = chunk.iter().map(|&i| connect(server.addr, i / 3, i));
            for (ws, &i) in futures::future::join_all(joins).await.into_iter().zip(chunk) {
                let (sink, mut stream) = ws.split();
                let rec = recorder.clone();
                tokio::spawn(async move {
                    while let Some(Ok(m)) = stream.next().await {
                        if let Message::Text(t) = m
                            && let Some(sent) = sent_at(t.as_str())
                        {
                            rec.record(sent);
                        }
                    }
                    rec.closed.store(true, Ordering::Relaxed);
                });
                let room_base = (i / 3) * 3;
                let peer = format!("u{}", room_base + (i - room_base + 1) % 3);
                sinks.push((sink, peer));
            }
        }
        let (setup_rss, _) = proc_stats(pid);
        println!(
            "orb-signaling relay benchmark: {} connections in {rooms} rooms (3 per room), set up in {:.1}s; \
             server RSS after joins {} MiB; threads: server {}, load generator {}",
            opts.conns,
            started.elapsed().as_secs_f64(),
            setup_rss / 1024,
            opts.server_threads,
            opts.client_threads
        );

        let rate = Arc::new(AtomicU64::new(5_000));
        let stop = Arc::new(AtomicBool::new(false));
        let per = sinks.len().div_ceil(PACERS);
        let mut groups = Vec::new();
        while !sinks.is_empty() {
            let rest = sinks.split_off(sinks.len().min(per));
            groups.push(std::mem::replace(&mut sinks, rest));
        }
        let mut pacers = Vec::new();
        for group in groups {
            pacers.push(tokio::spawn(pace(
                group,
                rate.clone(),
                opts.conns,
                recorder.clone(),
                stop.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;

        println!("\n| target msgs/s | achieved msgs/s | p50 | p99 | max | server-side p50 / p99 (bucket bound) | server CPU |");
        println!("|---:|---:|---:|---:|---:|---:|---:|");
        let mut best = None;
        for target in RATES {
            rate.store(target, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (_, cpu0) = proc_stats(pid);
            let hist0 = server_histogram(server.addr).await;
            let from = recorder.epoch.elapsed().as_micros() as u64;
            let measure = Duration::from_secs(opts.step_secs);
            *recorder.window.lock().unwrap() = (from, from + measure.as_micros() as u64);
            recorder.samples.lock().unwrap().clear();
            tokio::time::sleep(measure).await;
            let (_, cpu1) = proc_stats(pid);
            let hist1 = server_histogram(server.addr).await;
            let server_q = |p| histogram_quantile(&hist0, &hist1, p) * 1e3;
            // Let the window's last messages arrive (or count as late) before reading.
            tokio::time::sleep(P99_LIMIT * 4).await;
            let mut samples = std::mem::take(&mut *recorder.samples.lock().unwrap());
            samples.sort_unstable();
            let achieved = samples.len() as f64 / measure.as_secs_f64();
            let (p50, p99, max) = (
                percentile(&samples, 0.5),
                percentile(&samples, 0.99),
                percentile(&samples, 1.0),
            );
            println!(
                "| {target} | {achieved:.0} | {:.2} ms | {:.2} ms | {:.1} ms | ≤ {} / ≤ {} ms | {:.0}% |",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3,
                max.as_secs_f64() * 1e3,
                server_q(0.5),
                server_q(0.99),
                (cpu1 - cpu0) / measure.as_secs_f64() * 100.0
            );
            let sustained =
                achieved >= target as f64 * 0.95 && p99 <= P99_LIMIT && !recorder.closed.load(Ordering::Relaxed);
            if !sustained {
                break;
            }
            best = Some(target);
        }
        stop.store(true, Ordering::Relaxed);
        for p in pacers {
            let _ = p.await;
        }
        let (peak_rss, cpu) = proc_stats(pid);
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!("\nload average during the run (1/5/15 min): {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
        println!(
            "highest sustained rate (>= 95% delivered, p99 <= {} ms, no disconnects): {}",
            P99_LIMIT.as_millis(),
            best.map_or("below the first step".to_owned(), |b| format!("{b} msgs/s"))
        );
        println!(
            "server peak RSS: {} MiB; server CPU time: {cpu:.1}s; disconnects: {}",
            peak_rss / 1024,
            if recorder.closed.load(Ordering::Relaxed) {
                "yes"
            } else {
                "none"
            }
        );
    });
    drop(server);
}
