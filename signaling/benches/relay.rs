//! Relay benchmark (a report, not a test): starts the real `orb-signaling` binary, connects
//! ~1000 WebSocket clients on loopback (3 per room), and has every client send targeted
//! `ice-candidate` messages to a peer at a fixed total rate, stepping the rate up. Each message
//! carries its send time; the receiver computes the end-to-end relay latency (client → server →
//! client, load generator included). Reports p50/p99/max per step, the highest sustained rate
//! with p99 under the limit, messages lost, the servers' CPU per delivered message, and join
//! latency (connect → `peer-discovery`: one at a time, and in bursts as the clients arrive).
//!
//! The same load runs, in one run, against: one replica without Redis (`one`), one replica with
//! Redis (`redis`), three replicas sharing a Redis with each room's three clients on three
//! different replicas (`redis3`: every relay crosses replicas), and seed 001's Node server
//! (`seed`, `benches/seed-server`, installed with npm on first use) as the reference. Where the
//! machine has two cores or more, the servers (and Redis) run on core 0 and the load generator on
//! the others (`--no-pin` to share all cores).
//!
//! Run: `cargo bench -p orb-signaling --bench relay` (options, after `--`: `--target
//! one|redis|redis3|seed|all`, `--conns 999`, `--step-secs 5`, `--server-threads 1`,
//! `--client-threads 1`, `--no-pin`). Needs `redis-server`, `taskset` (util-linux) and, for
//! `seed`, `node` and `npm`.

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
    18_000, 30_000, 45_000, 60_000, 75_000, 100_000, 125_000, 150_000, 200_000, 250_000,
];
/// The rate every target is measured at, sustained or not: the comparison point with the seed.
const COMPARED_RATE: u64 = 45_000;
/// Sequential joins measured per target (each in a fresh room, closed before the next).
const SEQUENTIAL_JOINS: usize = 300;
/// Clients connecting at once while the rooms fill.
const JOIN_BURST: usize = 60;
/// Short ticks keep the offered load smooth; long ones would send synchronized bursts that
/// measure queueing in the load generator rather than relay latency.
const PACER_TICK: Duration = Duration::from_millis(1);
const PACERS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    One,
    Redis,
    Redis3,
    Seed,
}

impl Target {
    const ALL: [Target; 4] = [Target::One, Target::Redis, Target::Redis3, Target::Seed];

    fn label(self) -> &'static str {
        match self {
            Target::One => "orb-signaling, 1 replica, no Redis",
            Target::Redis => "orb-signaling, 1 replica, Redis",
            Target::Redis3 => "orb-signaling, 3 replicas, Redis (every relay crosses replicas)",
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
    /// Servers on core 0, the load generator on the other cores.
    pin: bool,
}

fn options() -> Options {
    let mut o = Options {
        targets: Target::ALL.to_vec(),
        conns: 999,
        step_secs: 5,
        server_threads: 1,
        client_threads: 1,
        pin: std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2,
    };
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--no-pin") {
        o.pin = false;
    }
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
                    "redis3" => vec![Target::Redis3],
                    "seed" => vec![Target::Seed],
                    "all" => Target::ALL.to_vec(),
                    other => panic!("--target one|redis|redis3|seed|all, not {other}"),
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
    redis: Option<RedisServer>,
}

impl Servers {
    /// Every server-side process: the servers and Redis.
    fn pids(&self) -> Vec<u32> {
        let redis = self.redis.as_ref().and_then(RedisServer::pid);
        self.children.iter().map(Child::id).chain(redis).collect()
    }
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

/// `program`, on core 0 when pinned (taskset execs it: the child's pid is the program's).
fn on_server_core(program: &str, pin: bool) -> Command {
    if !pin {
        return Command::new(program);
    }
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0", program]);
    cmd
}

/// Moves a running process (every thread) to core 0.
fn pin_to_server_core(pid: u32) {
    let ok = Command::new("taskset")
        .args(["-a", "-p", "-c", "0", &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "taskset (util-linux) could not pin pid {pid}");
}

/// Moves this process to the cores after 0 before any thread of the load generator exists.
fn pin_load_generator() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ok = Command::new("taskset")
        .args(["-p", "-c", &format!("1-{}", cores - 1), &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "taskset (util-linux) could not pin the load generator");
}

fn start_signaling(threads: usize, redis: Option<(&RedisServer, usize)>, pin: bool) -> (Child, SocketAddr) {
    let addr = free_addr();
    let mut cmd = on_server_core(env!("CARGO_BIN_EXE_orb-signaling"), pin);
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
fn start_seed(pin: bool) -> (Child, SocketAddr) {
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
    let child = on_server_core("node", pin)
        .arg("server.mjs")
        .current_dir(&dir)
        .env("PORT", addr.port().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start node (the seed server needs Node.js)");
    (child, addr)
}

fn start_servers(target: Target, threads: usize, pin: bool) -> Servers {
    let replicas = match target {
        Target::One => 0,
        Target::Redis => 1,
        Target::Redis3 => 3,
        Target::Seed => {
            let (child, addr) = start_seed(pin);
            return Servers {
                children: vec![child],
                addrs: vec![addr],
                redis: None,
            };
        }
    };
    let redis = (replicas > 0).then(RedisServer::start);
    if let Some(pid) = redis.as_ref().and_then(RedisServer::pid).filter(|_| pin) {
        pin_to_server_core(pid);
    }
    let (children, addrs) = (0..replicas.max(1))
        .map(|i| start_signaling(threads, redis.as_ref().map(|r| (r, i)), pin))
        .unzip();
    Servers { children, addrs, redis }
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

/// Peak RSS summed and CPU seconds summed over the server-side processes (Redis included).
fn servers_stats(servers: &Servers) -> (u64, f64) {
    servers
        .pids()
        .into_iter()
        .map(proc_stats)
        .fold((0, 0.0), |(r, c), (r2, c2)| (r + r2, c + c2))
}

/// Shared by the readers: the current measurement window and the latencies seen in it.
struct Recorder {
    epoch: Instant,
    window: Mutex<(u64, u64)>,
    samples: Mutex<Vec<u32>>,
    /// Frames sent and received over the whole run: the difference at the end was lost.
    sent: AtomicU64,
    received: AtomicU64,
    closed: AtomicBool,
}

impl Recorder {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            window: Mutex::new((0, 0)),
            samples: Mutex::new(Vec::new()),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        }
    }

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

/// A client joined to `room` as `user`, and how long that took: from the TCP connect to the
/// `peer-discovery` answering its join, and of that the part until the WebSocket was open.
async fn connect_timed(addr: SocketAddr, room: &str, user: usize) -> (Ws, Duration, Duration) {
    let started = Instant::now();
    let url = format!("ws://{addr}/ws-simple/{room}");
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .expect("connect");
    let upgraded = started.elapsed();
    let join = format!(
        r#"{{"type":"join","roomId":"{room}","userId":"u{user}","userRole":"client","participantType":"human"}}"#
    );
    ws.send(Message::text(join)).await.unwrap();
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str().contains("peer-discovery") => {
                return (ws, started.elapsed(), upgraded);
            }
            Some(Ok(_)) => {}
            other => panic!("join failed: {other:?}"),
        }
    }
}

async fn connect(addr: SocketAddr, room: &str, user: usize) -> (Ws, Duration) {
    let (ws, took, _) = connect_timed(addr, room, user).await;
    (ws, took)
}

/// Joins one at a time, each in a fresh room and closed before the next: the latency of a join
/// on a server that has nothing else to do but hold the benchmark's idle sockets.
/// Also prints where the time goes: until the WebSocket is open (TCP connect and the HTTP
/// upgrade), and from the join message to `peer-discovery`.
async fn sequential_joins(servers: &Servers) -> Vec<Duration> {
    let mut took = Vec::with_capacity(SEQUENTIAL_JOINS);
    let mut upgrades = Vec::with_capacity(SEQUENTIAL_JOINS);
    let mut answers = Vec::with_capacity(SEQUENTIAL_JOINS);
    for i in 0..SEQUENTIAL_JOINS {
        let addr = servers.addrs[i % servers.addrs.len()];
        let (mut ws, t, upgraded) = connect_timed(addr, &format!("join-{i}"), 1_000_000 + i).await;
        took.push(t);
        upgrades.push(upgraded);
        answers.push(t - upgraded);
        let _ = ws.close(None).await;
    }
    let (upgrade, answer) = (quantiles(&mut upgrades), quantiles(&mut answers));
    println!(
        "joins one at a time, p50 / p99: WebSocket open {} / {}, join → peer-discovery {} / {}",
        ms(upgrade.0),
        ms(upgrade.1),
        ms(answer.0),
        ms(answer.1)
    );
    took
}

fn quantiles(durations: &mut [Duration]) -> (Duration, Duration, Duration) {
    durations.sort_unstable();
    let at = |p: f64| durations[((durations.len() - 1) as f64 * p).round() as usize];
    (at(0.5), at(0.99), at(1.0))
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
            recorder.sent.fetch_add(1, Ordering::Relaxed);
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

/// One measured step.
struct Step {
    rate: u64,
    p99: Duration,
    /// Server-side CPU (Redis included) per delivered message.
    cpu_per_message: Duration,
}

/// What one target measured.
struct Outcome {
    steps: Vec<Step>,
    best: Option<u64>,
    joins_alone: (Duration, Duration, Duration),
    joins_in_bursts: (Duration, Duration, Duration),
    lost: u64,
}

impl Outcome {
    fn at(&self, rate: u64) -> Option<&Step> {
        self.steps.iter().find(|s| s.rate == rate)
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let opts = options();
    if opts.pin {
        pin_load_generator();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.client_threads)
        .enable_all()
        .build()
        .unwrap();
    let mut outcomes = vec![];
    for &target in &opts.targets {
        let servers = start_servers(target, opts.server_threads, opts.pin);
        println!("\n## {}\n", target.label());
        let outcome = rt.block_on(run(&opts, target, &servers));
        outcomes.push((target, outcome));
        drop(servers);
    }
    println!(
        "\n## Summary\n\n{}; server threads {}, load generator threads {}\n",
        if opts.pin {
            "servers and Redis on core 0, the load generator on the other cores"
        } else {
            "not pinned: everything shares every core"
        },
        opts.server_threads,
        opts.client_threads
    );
    let k = COMPARED_RATE / 1000;
    println!(
        "| server | p99 at 18k msgs/s | p99 at {k}k msgs/s | highest rate with p99 <= {} ms | lost | CPU per message at 18k | join p50 / p99 alone | join p50 / p99 in bursts of {JOIN_BURST} |",
        P99_LIMIT.as_millis()
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (target, o) in &outcomes {
        let p99_at = |rate| o.at(rate).map_or("—".to_owned(), |s| ms(s.p99));
        let cpu = o.at(RATES[0]).map_or("—".to_owned(), |s| {
            format!("{:.1} µs", s.cpu_per_message.as_secs_f64() * 1e6)
        });
        let best = o.best.map_or(format!("below {}", RATES[0]), |b| format!("{b} msgs/s"));
        println!(
            "| {} | {} | {} | {best} | {} | {cpu} | {} / {} | {} / {} |",
            target.label(),
            p99_at(RATES[0]),
            p99_at(COMPARED_RATE),
            o.lost,
            ms(o.joins_alone.0),
            ms(o.joins_alone.1),
            ms(o.joins_in_bursts.0),
            ms(o.joins_in_bursts.1),
        );
    }
    let seed = outcomes.iter().find(|(t, _)| *t == Target::Seed).map(|(_, o)| o);
    let Some(seed) = seed else { return };
    println!("\nAgainst the seed in this run:");
    for (target, o) in outcomes.iter().filter(|(t, _)| *t != Target::Seed) {
        let relay = match (o.at(COMPARED_RATE), seed.at(COMPARED_RATE)) {
            (Some(ours), Some(theirs)) => format!(
                "p99 at {k}k {:.2}× the seed's (the goal for one replica: ≤ 0.20×)",
                ours.p99.as_secs_f64() / theirs.p99.as_secs_f64()
            ),
            _ => format!("no p99 at {k}k"),
        };
        println!(
            "- {}: {relay}; join p99 alone {:.2}× the seed's, in bursts {:.2}× (goal ≤ 1×)",
            target.label(),
            o.joins_alone.1.as_secs_f64() / seed.joins_alone.1.as_secs_f64(),
            o.joins_in_bursts.1.as_secs_f64() / seed.joins_in_bursts.1.as_secs_f64(),
        );
    }
}

async fn run(opts: &Options, target: Target, servers: &Servers) -> Outcome {
    let ours = target != Target::Seed;
    wait_ready(servers, ours).await;
    let mut joins_alone = sequential_joins(servers).await;
    let recorder = Arc::new(Recorder::new());
    let started = Instant::now();
    let mut sinks = Vec::with_capacity(opts.conns);
    let rooms = opts.conns / 3;
    let mut readers = vec![];
    let mut joins_in_bursts = Vec::with_capacity(opts.conns);
    for chunk in (0..opts.conns).collect::<Vec<_>>().chunks(JOIN_BURST) {
        let joins = chunk.iter().map(|&i| {
            let room = format!("bench-{}", i / 3);
            async move { connect(servers.addrs[i % servers.addrs.len()], &room, i).await }
        });
        for ((ws, took), &i) in futures::future::join_all(joins).await.into_iter().zip(chunk) {
            joins_in_bursts.push(took);
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
    let (alone, bursts) = (quantiles(&mut joins_alone), quantiles(&mut joins_in_bursts));
    println!(
        "{} connections in {rooms} rooms (3 per room), set up in {:.1}s; server RSS after joins {} MiB\n\
         joins one at a time ({SEQUENTIAL_JOINS}): p50 {} p99 {} max {}; in bursts of {JOIN_BURST}: p50 {} p99 {} max {}",
        opts.conns,
        started.elapsed().as_secs_f64(),
        setup_rss / 1024,
        ms(alone.0),
        ms(alone.1),
        ms(alone.2),
        ms(bursts.0),
        ms(bursts.1),
        ms(bursts.2),
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
        "\n| target msgs/s | achieved msgs/s | p50 | p99 | max | server-side p50 / p99 (bucket bound) | server CPU | CPU per message |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut outcome = Outcome {
        steps: vec![],
        best: None,
        joins_alone: alone,
        joins_in_bursts: bursts,
        lost: 0,
    };
    let mut keeping_up = true;
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
        let cpu_per_message = Duration::from_secs_f64((cpu1 - cpu0) / samples.len().max(1) as f64);
        println!(
            "| {target_rate} | {achieved:.0} | {} | {} | {:.1} ms | {server_side} | {:.0}% | {:.1} µs |",
            ms(p50),
            ms(p99),
            max.as_secs_f64() * 1e3,
            (cpu1 - cpu0) / measure.as_secs_f64() * 100.0,
            cpu_per_message.as_secs_f64() * 1e6
        );
        outcome.steps.push(Step {
            rate: target_rate,
            p99,
            cpu_per_message,
        });
        let sustained =
            achieved >= target_rate as f64 * 0.95 && p99 <= P99_LIMIT && !recorder.closed.load(Ordering::Relaxed);
        keeping_up &= sustained;
        if keeping_up {
            outcome.best = Some(target_rate);
        }
        // Every target is measured up to the compared rate; beyond it, only while it keeps up.
        if !sustained && target_rate >= COMPARED_RATE {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for p in pacers {
        let _ = p.await;
    }
    // What is still on its way arrives now, or never.
    tokio::time::sleep(Duration::from_secs(3)).await;
    outcome.lost = recorder
        .sent
        .load(Ordering::Relaxed)
        .saturating_sub(recorder.received.load(Ordering::Relaxed));
    for r in readers {
        r.abort();
    }
    let (peak_rss, cpu) = servers_stats(servers);
    let per_process: Vec<String> = servers
        .pids()
        .into_iter()
        .map(|pid| {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            format!("{} {:.1}s", name.trim(), proc_stats(pid).1)
        })
        .collect();
    println!("server-side CPU time per process: {}", per_process.join(", "));
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
        "server peak RSS (summed): {} MiB; server CPU time: {cpu:.1}s; disconnects: {}; lost: {} of {} sent",
        peak_rss / 1024,
        if recorder.closed.load(Ordering::Relaxed) {
            "yes"
        } else {
            "none"
        },
        outcome.lost,
        recorder.sent.load(Ordering::Relaxed)
    );
    outcome
}
