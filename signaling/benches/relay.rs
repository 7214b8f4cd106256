//! Relay benchmark (a report, not a test): starts the real `orb-signaling` binary, connects
//! ~1000 WebSocket clients on loopback (3 per room), and has every client send targeted
//! `ice-candidate` messages to a peer at a fixed total rate, stepping the rate up. Each message
//! carries its send time; the receiver computes the end-to-end relay latency (client → server →
//! client, load generator included). Reports p50/p99/max per step, the highest sustained rate
//! with p99 under the limit, and the server's peak RSS and CPU time.
//!
//! The same load runs, in one run, against: one replica without Redis (`one`), one replica with
//! Redis (`redis`), two replicas sharing a Redis with each room's clients spread over them
//! (`redis2`: two of a room's three relays cross replicas), and seed 001's Node server (`seed`,
//! `benches/seed-server`, installed with npm on first use) as the reference.
//!
//! Run: `cargo bench -p orb-signaling --bench relay` (options, after `--`: `--target
//! one|redis|redis2|seed|all`, `--conns 999`, `--step-secs 5`, `--server-threads 2`,
//! `--client-threads 2`). Needs `redis-server` and, for `seed`, `node` and `npm`.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::SinkExt;
use futures::stream::{SplitSink, StreamExt};
use orb_signaling::cluster::testing::RedisServer;
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    One,
    Redis,
    Redis2,
    Seed,
}

impl Target {
    const ALL: [Target; 4] = [Target::One, Target::Redis, Target::Redis2, Target::Seed];

    fn label(self) -> &'static str {
        match self {
            Target::One => "orb-signaling, 1 replica, no Redis",
            Target::Redis => "orb-signaling, 1 replica, Redis",
            Target::Redis2 => "orb-signaling, 2 replicas, Redis (rooms spread)",
            Target::Seed => "seed 001 Node server (reference)",
        }
    }
}

struct Options {
    targets: Vec<Target>,
    conns: usize,
    step_secs: u64,
    /// Worker threads of the server (`TOKIO_WORKER_THREADS`) and of the load generator.
    server_threads: usize,
    client_threads: usize,
}

fn options() -> Options {
    let mut o = Options {
        targets: Target::ALL.to_vec(),
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
            "--target" => {
                o.targets = match w[1].as_str() {
                    "one" => vec![Target::One],
                    "redis" => vec![Target::Redis],
                    "redis2" => vec![Target::Redis2],
                    "seed" => vec![Target::Seed],
                    "all" => Target::ALL.to_vec(),
                    other => panic!("--target one|redis|redis2|seed|all, not {other}"),
                }
            }
            _ => {}
        }
    }
    o.conns -= o.conns % 3;
    o
}

/// The server processes of one target (and the Redis they share); client `i` uses
/// `addrs[i % addrs.len()]`.
struct Servers {
    children: Vec<Child>,
    addrs: Vec<SocketAddr>,
    _redis: Option<RedisServer>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn start_signaling(threads: usize, redis: Option<(&RedisServer, usize)>) -> (Child, SocketAddr) {
    let addr = free_addr();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orb-signaling"));
    cmd.args(["--listen", &addr.to_string(), "--auth", "none", "--orb-runtime", "none"])
        // The benchmark measures the relay path, not the per-client limits.
        .args(["--max-messages-per-second", "1000000", "--send-queue", "8192"])
        // Every load-generator socket comes from 127.0.0.1.
        .args(["--max-connections-per-client", "100000"])
        .args(["--idle-socket-timeout", "10m", "--max-participants-per-room", "3"]);
    if let Some((redis, i)) = redis {
        cmd.args(["--redis-url", &redis.url(), "--replica-id", &format!("bench-{i}")]);
    }
    let child = cmd
        .env("RUST_LOG", "warn")
        .env("TOKIO_WORKER_THREADS", threads.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start orb-signaling (build it with cargo bench)");
    (child, addr)
}

/// Seed 001's server under Node, from a copy of `benches/seed-server` with its `ws` installed.
fn start_seed() -> (Child, SocketAddr) {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/seed-server");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-seed-server");
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["package.json", "server.mjs", "websocket-simple-enhanced.mjs"] {
        std::fs::copy(source.join(file), dir.join(file)).unwrap();
    }
    if !dir.join("node_modules/ws").exists() {
        let ok = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "npm install of the seed server's ws failed");
    }
    let addr = free_addr();
    let child = Command::new("node")
        .arg("server.mjs")
        .current_dir(&dir)
        .env("PORT", addr.port().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start node (the seed server needs Node.js)");
    (child, addr)
}

fn start_servers(target: Target, threads: usize) -> Servers {
    let (redis, replicas) = match target {
        Target::One => (None, 1),
        Target::Redis => (Some(RedisServer::start()), 1),
        Target::Redis2 => (Some(RedisServer::start()), 2),
        Target::Seed => {
            let (child, addr) = start_seed();
            return Servers {
                children: vec![child],
                addrs: vec![addr],
                _redis: None,
            };
        }
    };
    let (children, addrs) = (0..replicas)
        .map(|i| start_signaling(threads, redis.as_ref().map(|r| (r, i))))
        .unzip();
    Servers {
        children,
        addrs,
        _redis: redis,
    }
}

/// Ready when every server answers (`/readyz` 200 for ours: registered with Redis).
async fn wait_ready(servers: &Servers, ours: bool) {
    for addr in &servers.addrs {
        for _ in 0..400 {
            let ready = if ours {
                orb_telemetry::probe::get(*addr, "/readyz", Duration::from_secs(5))
                    .await
                    .is_ok_and(|(status, _)| status == 200)
            } else {
                TcpStream::connect(addr).await.is_ok()
            };
            if ready {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
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

/// Peak RSS summed and CPU seconds summed over the servers' processes.
fn servers_stats(servers: &Servers) -> (u64, f64) {
    servers
        .children
        .iter()
        .map(|c| proc_stats(c.id()))
        .fold((0, 0.0), |(r, c), (r2, c2)| (r + r2, c + c2))
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

/// The servers' own relay latency histogram, summed (cumulative buckets by upper bound, in
/// seconds); empty for the seed server, which has none.
async fn servers_histogram(servers: &Servers, ours: bool) -> Vec<(f64, u64)> {
    let mut sum: Vec<(f64, u64)> = vec![];
    if !ours {
        return sum;
    }
    for addr in &servers.addrs {
        for (le, n) in server_histogram(*addr).await {
            match sum.iter_mut().find(|(l, _)| *l == le) {
                Some((_, m)) => *m += n,
                None => sum.push((le, n)),
            }
        }
    }
    sum
}

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

/// What one target measured: p50 and p99 at the first step (18k msgs/s) and the highest
/// sustained rate.
struct Outcome {
    first: Option<(Duration, Duration)>,
    best: Option<u64>,
}

fn main() {
    let opts = options();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.client_threads)
        .enable_all()
        .build()
        .unwrap();
    let mut outcomes = vec![];
    for &target in &opts.targets {
        let servers = start_servers(target, opts.server_threads);
        println!("\n## {}\n", target.label());
        let outcome = rt.block_on(run(&opts, target, &servers));
        outcomes.push((target, outcome));
        drop(servers);
    }
    println!("\n## Summary\n");
    println!(
        "| server | p50 at 18k msgs/s | p99 at 18k msgs/s | highest rate with p99 <= {} ms |",
        P99_LIMIT.as_millis()
    );
    println!("|---|---:|---:|---:|");
    for (target, o) in outcomes {
        let (p50, p99) = o.first.map_or(("—".into(), "—".into()), |(a, b)| {
            (
                format!("{:.2} ms", a.as_secs_f64() * 1e3),
                format!("{:.2} ms", b.as_secs_f64() * 1e3),
            )
        });
        let best = o.best.map_or("below 18000".to_owned(), |b| format!("{b} msgs/s"));
        println!("| {} | {p50} | {p99} | {best} |", target.label());
    }
}

async fn run(opts: &Options, target: Target, servers: &Servers) -> Outcome {
    let ours = target != Target::Seed;
    wait_ready(servers, ours).await;
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
    let mut readers = vec![];
    for chunk in (0..opts.conns).collect::<Vec<_>>().chunks(60) {
        let joins = chunk
            .iter()
            .map(|&i| connect(servers.addrs[i % servers.addrs.len()], i / 3, i));
        for (ws, &i) in futures::future::join_all(joins).await.into_iter().zip(chunk) {
            let (sink, mut stream) = ws.split();
            let rec = recorder.clone();
            readers.push(tokio::spawn(async move {
                while let Some(Ok(m)) = stream.next().await {
                    if let Message::Text(t) = m
                        && let Some(sent) = sent_at(t.as_str())
                    {
                        rec.record(sent);
                    }
                }
                rec.closed.store(true, Ordering::Relaxed);
            }));
            let room_base = (i / 3) * 3;
            let peer = format!("u{}", room_base + (i - room_base + 1) % 3);
            sinks.push((sink, peer));
        }
    }
    let (setup_rss, _) = servers_stats(servers);
    println!(
        "{} connections in {rooms} rooms (3 per room), set up in {:.1}s; server RSS after joins {} MiB; \
         threads: server {}, load generator {}",
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

    println!(
        "\n| target msgs/s | achieved msgs/s | p50 | p99 | max | server-side p50 / p99 (bucket bound) | server CPU |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut outcome = Outcome {
        first: None,
        best: None,
    };
    for target_rate in RATES {
        rate.store(target_rate, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (_, cpu0) = servers_stats(servers);
        let hist0 = servers_histogram(servers, ours).await;
        let from = recorder.epoch.elapsed().as_micros() as u64;
        let measure = Duration::from_secs(opts.step_secs);
        *recorder.window.lock().unwrap() = (from, from + measure.as_micros() as u64);
        recorder.samples.lock().unwrap().clear();
        tokio::time::sleep(measure).await;
        let (_, cpu1) = servers_stats(servers);
        let hist1 = servers_histogram(servers, ours).await;
        let server_side = if hist1.is_empty() {
            "—".to_owned()
        } else {
            let q = |p| histogram_quantile(&hist0, &hist1, p) * 1e3;
            format!("≤ {} / ≤ {} ms", q(0.5), q(0.99))
        };
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
            "| {target_rate} | {achieved:.0} | {:.2} ms | {:.2} ms | {:.1} ms | {server_side} | {:.0}% |",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3,
            (cpu1 - cpu0) / measure.as_secs_f64() * 100.0
        );
        if outcome.first.is_none() {
            outcome.first = Some((p50, p99));
        }
        let sustained =
            achieved >= target_rate as f64 * 0.95 && p99 <= P99_LIMIT && !recorder.closed.load(Ordering::Relaxed);
        if !sustained {
            break;
        }
        outcome.best = Some(target_rate);
    }
    stop.store(true, Ordering::Relaxed);
    for p in pacers {
        let _ = p.await;
    }
    for r in readers {
        r.abort();
    }
    let (peak_rss, cpu) = servers_stats(servers);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nload average (1/5/15 min): {}; highest sustained rate (>= 95% delivered, p99 <= {} ms, no disconnects): {}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        P99_LIMIT.as_millis(),
        outcome
            .best
            .map_or("below the first step".to_owned(), |b| format!("{b} msgs/s"))
    );
    println!(
        "server peak RSS (summed): {} MiB; server CPU time: {cpu:.1}s; disconnects: {}",
        peak_rss / 1024,
        if recorder.closed.load(Ordering::Relaxed) {
            "yes"
        } else {
            "none"
        }
    );
    outcome
}
