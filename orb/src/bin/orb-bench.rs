//! `orb-bench`: measures the orb process end to end on this machine and prints a Markdown
//! report. It starts the `orb` binary next to itself (build both with
//! `cargo build --release -p orb`) against an in-process signaling relay, with scripted humans
//! on loopback.
//!
//! Usage: `orb-bench [--runs N] [--bursts N] [--stream-seconds N] [--churn N]`

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use orb::audio::rms;
use orb::procstat;
use orb::testkit::OrbProcess;
use orb::testkit::human::{Human, Voice};
use orb::testkit::relay::TestRelay;
use orb_protocol::UserRole;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(30);

struct Args {
    runs: usize,
    bursts: usize,
    stream_seconds: u64,
    churn: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        runs: 20,
        bursts: 30,
        stream_seconds: 20,
        churn: 50,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value: u64 = it.next().context("flag without value")?.parse()?;
        match flag.as_str() {
            "--runs" => a.runs = value as usize,
            "--bursts" => a.bursts = value as usize,
            "--stream-seconds" => a.stream_seconds = value,
            "--churn" => a.churn = value as usize,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

fn orb_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name("orb");
    if !path.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p orb`",
            path.display()
        );
    }
    Ok(path)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "p50 {:.1} ms, p99 {:.1} ms (n={})",
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v.len()
    )
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
}

async fn stop(mut orb: OrbProcess) {
    let _ = orb.terminate();
    let _ = tokio::time::timeout(WAIT, orb.child.wait()).await;
    let _ = std::fs::remove_file(&orb.termination_log);
}

/// Process start → joined (orb_ready at signaling) → first peer connected.
async fn startup(binary: &Path, runs: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let (mut joined, mut connected, mut total) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let relay = TestRelay::start().await?;
        let room = format!("bench-start-{run}");
        let t0 = Instant::now();
        let orb = OrbProcess::spawn(binary, &relay.url(), &room, &[])?;
        let ready = relay
            .wait_control("orb_ready", 1, WAIT)
            .await
            .context("orb never joined")?;
        let mut coach = Human::join(&relay.url(), &room, "coach-1", UserRole::Coach)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if !coach.wait_connected(WAIT).await {
            bail!("the coach never connected");
        }
        let up = Instant::now();
        joined.push(ms(ready - t0));
        connected.push(ms(up - ready));
        total.push(ms(up - t0));
        coach.leave().await;
        stop(orb).await;
    }
    Ok((joined, connected, total))
}

/// Round trips of tone bursts through the test brain with no echo delay.
async fn echo_latency(binary: &Path, bursts: usize) -> anyhow::Result<(Vec<f64>, Option<f64>)> {
    let relay = TestRelay::start().await?;
    let orb = OrbProcess::spawn(binary, &relay.url(), "bench-echo", &["--test-echo-delay=0ms"])?;
    relay
        .wait_control("orb_ready", 1, WAIT)
        .await
        .context("orb never joined")?;
    let mut coach = Human::join(&relay.url(), "bench-echo", "coach-1", UserRole::Coach)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if !coach.wait_connected(WAIT).await {
        bail!("the coach never connected");
    }
    // Let the greeting finish.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut rtts = Vec::new();
    for _ in 0..bursts {
        coach.drain_audio();
        coach.set_voice(Voice::Tone(1000.0));
        // The first echoed frame: the orb only echoes voiced frames, so anything loud is echo.
        let deadline = Instant::now() + WAIT;
        let heard = loop {
            let frame = tokio::time::timeout_at(deadline, coach.audio.recv())
                .await?
                .context("audio ended")?;
            if rms(&frame.pcm) > 0.02 {
                break frame.at;
            }
        };
        let started = coach.voice_started.lock().expect("voice lock").take();
        if let Some(started) = started {
            rtts.push(ms(heard - started));
        }
        coach.set_voice(Voice::Silence);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let metrics = orb.http_get("/metrics").await.map(|(_, b)| b).unwrap_or_default();
    let internal = match (
        metric(&metrics, "orb_brain_latency_seconds_sum"),
        metric(&metrics, "orb_brain_latency_seconds_count"),
    ) {
        (Some(sum), Some(count)) if count > 0.0 => Some(sum / count * 1000.0),
        _ => None,
    };
    coach.leave().await;
    stop(orb).await;
    Ok((rtts, internal))
}

/// Idle RSS, then RSS and CPU while two humans stream and the orb echoes both.
async fn resources(binary: &Path, seconds: u64) -> anyhow::Result<(u64, u64, f64)> {
    let relay = TestRelay::start().await?;
    let orb = OrbProcess::spawn(binary, &relay.url(), "bench-load", &[])?;
    relay
        .wait_control("orb_ready", 1, WAIT)
        .await
        .context("orb never joined")?;
    let pid = orb.child.id().context("orb exited")?.to_string();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, idle_rss) = procstat::read(&pid).context("procfs")?;
    let mut coach = Human::join(&relay.url(), "bench-load", "coach-1", UserRole::Coach)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut client = Human::join(&relay.url(), "bench-load", "client-1", UserRole::Client)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if !(coach.wait_connected(WAIT).await && client.wait_connected(WAIT).await) {
        bail!("the humans never connected");
    }
    coach.set_voice(Voice::Tone(1000.0));
    client.set_voice(Voice::Tone(700.0));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ticks0, _) = procstat::read(&pid).context("procfs")?;
    let t0 = Instant::now();
    // Keep the receive queues short while streaming.
    let end = t0 + Duration::from_secs(seconds);
    while Instant::now() < end {
        coach.drain_audio();
        client.drain_audio();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ticks1, rss) = procstat::read(&pid).context("procfs")?;
    let cpu = (ticks1 - ticks0) as f64 / 100.0 / t0.elapsed().as_secs_f64() * 100.0;
    coach.leave().await;
    client.leave().await;
    stop(orb).await;
    Ok((idle_rss, rss, cpu))
}

/// RSS before and after `cycles` join → connect → leave cycles of one human (leak check).
async fn churn(binary: &Path, cycles: usize) -> anyhow::Result<(u64, u64)> {
    let relay = TestRelay::start().await?;
    let orb = OrbProcess::spawn(binary, &relay.url(), "bench-churn", &[])?;
    relay
        .wait_control("orb_ready", 1, WAIT)
        .await
        .context("orb never joined")?;
    let pid = orb.child.id().context("orb exited")?.to_string();
    let mut first = 0;
    for i in 0..cycles {
        let mut human = Human::join(&relay.url(), "bench-churn", &format!("client-{i}"), UserRole::Client)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if !human.wait_connected(WAIT).await {
            bail!("cycle {i}: the human never connected");
        }
        human.leave().await;
        if i == 4 {
            // After a few cycles allocator pools are warm; growth from here on is a leak.
            tokio::time::sleep(Duration::from_millis(500)).await;
            first = procstat::read(&pid).context("procfs")?.1;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let last = procstat::read(&pid).context("procfs")?.1;
    stop(orb).await;
    Ok((first, last))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let binary = orb_binary()?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("# orb benchmark\n");
    println!("machine: {cores} cores; orb binary: {}\n", binary.display());

    let (joined, connected, total) = startup(&binary, args.runs).await?;
    println!("## Start-up ({} runs)\n", args.runs);
    println!("| step | result |\n|---|---|");
    println!(
        "| process start → joined (orb_ready at signaling) | {} |",
        summary(joined)
    );
    println!(
        "| joined → first peer connected (human joins, offers, ICE+DTLS) | {} |",
        summary(connected)
    );
    println!("| process start → first peer connected | {} |\n", summary(total));

    let (rtts, internal) = echo_latency(&binary, args.bursts).await?;
    println!(
        "## Echo latency, test brain with --test-echo-delay=0ms ({} bursts)\n",
        args.bursts
    );
    println!("| measure | result |\n|---|---|");
    println!(
        "| round trip at the human: tone starts → first echoed frame decoded | {} |",
        summary(rtts)
    );
    match internal {
        Some(mean) => println!(
            "| orb added latency (frame in → echoed frame sent, `orb_brain_latency_seconds` mean) | {mean:.1} ms |\n"
        ),
        None => println!("| orb added latency | not measured |\n"),
    }

    let (idle, busy, cpu) = resources(&binary, args.stream_seconds).await?;
    println!("## Resources\n");
    println!("| state | RSS | CPU |\n|---|---|---|");
    println!("| idle, joined, no peers | {:.1} MiB | |", idle as f64 / 1048576.0);
    println!(
        "| two peers streaming, both echoed ({} s) | {:.1} MiB | {cpu:.1} % of one core |",
        args.stream_seconds,
        busy as f64 / 1048576.0
    );
    if args.churn > 5 {
        let (before, after) = churn(&binary, args.churn).await?;
        println!(
            "| after 5 → {} join/leave cycles of one human | {:.1} → {:.1} MiB | |",
            args.churn,
            before as f64 / 1048576.0,
            after as f64 / 1048576.0
        );
    }
    Ok(())
}
