//! The operator at platform scale: what its AiOrb store retains, trimmed and as the API server
//! sends it, and one admission pass over a long queue, planned from that store (its time, its heap
//! and its writes). Run: `cargo bench -p orb-operator --bench scale` (prints a report; asserts
//! nothing). The same on a real API server, with the operator binary: `tests/benches/admission.rs`.
//!
//! Each case runs in a child process of its own, so its RSS is that of a process holding that store
//! and nothing else; the orbs stream in from a file one at a time, as from a watch.

#[path = "../tests/support/mod.rs"]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use http::{Request, Response};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::Api;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use orb_api::AiOrb;
use orb_operator::admission::Admitter;
use orb_operator::metrics::Metrics;

/// Counts live heap bytes, and their peak, for the report.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const CAP: usize = 100;
const SHOWN: usize = 10;
const CASE_ENV: &str = "ORB_SCALE_BENCH_CASE";

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(0)
        * 4096
}

fn now() -> Timestamp {
    "2027-01-15T08:00:00Z".parse().unwrap()
}

/// `total` AiOrbs, `CAP` of them running and the rest queued.
fn platform(total: usize) -> support::Platform {
    support::platform(now(), CAP, total - CAP, 0, SHOWN)
}

fn main() {
    if let Ok(case) = std::env::var(CASE_ENV) {
        let (kind, rest) = case.split_once(':').unwrap();
        match kind {
            "store" => store_case(rest),
            _ => pass_case(rest),
        }
        return;
    }
    let dir = std::env::temp_dir().join(format!("orb-scale-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!("AiOrb store ({CAP} running, the rest queued; one process per case)");
    println!(
        "{:<8} {:<10} {:>14} {:>14} {:>12}",
        "orbs", "store", "heap retained", "process RSS", "per orb"
    );
    for n in [1_000, 10_000] {
        let file = dir.join(format!("orbs-{n}.jsonl"));
        let mut platform = platform(n);
        // One running orb has just ended: the pass cases fill its slot.
        platform.orbs[42]["status"]["phase"] = serde_json::json!("Succeeded");
        std::fs::write(ledger_file(&file), serde_json::to_vec(&platform.ledger).unwrap()).unwrap();
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        for orb in platform.orbs {
            serde_json::to_writer(&mut out, &orb).unwrap();
            out.write_all(b"\n").unwrap();
        }
        out.flush().unwrap();
        for trim in ["untrimmed", "trimmed"] {
            let case = format!("store:{trim}:{n}:{}", file.display());
            print!("{}", child(&case));
        }
    }
    println!("\nOne admission pass after a slot frees (cap {CAP}, {SHOWN} positions shown)");
    println!(
        "{:<8} {:>10} {:>8} {:>16} {:>14}",
        "orbs", "pass", "writes", "heap peak (pass)", "RSS after"
    );
    for n in [1_000, 10_000] {
        let file = dir.join(format!("orbs-{n}.jsonl"));
        print!("{}", child(&format!("pass:{n}:{}", file.display())));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn ledger_file(orbs: &Path) -> std::path::PathBuf {
    orbs.with_extension("ledger.json")
}

fn child(case: &str) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CASE_ENV, case)
        .output()
        .expect("the benchmark's child process");
    assert!(out.status.success(), "{case}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Streams the orbs from the file into a reflector store, as the controller's watch does.
fn load_store(file: &str, trim: bool) -> Writer<AiOrb> {
    let mut writer: Writer<AiOrb> = Writer::default();
    let reader = BufReader::new(std::fs::File::open(file).unwrap());
    for line in reader.lines() {
        let mut orb: AiOrb = serde_json::from_str(&line.unwrap()).unwrap();
        if trim {
            orb_operator::cache::trim(&mut orb);
        }
        writer.apply_watcher_event(&watcher::Event::Apply(orb));
    }
    writer
}

fn store_case(args: &str) {
    let mut parts = args.splitn(3, ':');
    let (trim, n, file) = (
        parts.next().unwrap() == "trimmed",
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let before = LIVE.load(Ordering::Relaxed);
    let store = load_store(file, trim).as_reader();
    let retained = LIVE.load(Ordering::Relaxed) - before;
    let orbs = store.state().len();
    let label = if trim { "trimmed" } else { "untrimmed" };
    println!(
        "{n:<8} {label:<10} {:>14} {:>14} {:>10} KiB",
        mib(retained),
        mib(rss()),
        retained / orbs / 1024
    );
}

/// One pass of the admitter, planning from the trimmed store of the platform's orbs (one of the
/// running ones just finished), against a fake API server holding the ledger.
fn pass_case(args: &str) {
    let (n, file) = args.split_once(':').unwrap();
    let n: usize = n.parse().unwrap();
    let writer = load_store(file, true);
    let ledger: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ledger_file(Path::new(file))).unwrap()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(support::serve_store(handle, ledger, support::store(&[])));
        let client = Client::new(service, "default");
        let metrics = std::sync::Arc::new(Metrics::default());
        let admitter = Admitter {
            ledger: Api::namespaced(client.clone(), "orb-system"),
            client: client.clone(),
            cap: CAP,
            shown_positions: SHOWN,
            limits: Default::default(),
            cache: writer.as_reader(),
            metrics,
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: "orb-operator".into(),
                    instance: None,
                },
            ),
            wake: Default::default(),
            now,
        };
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let started = Instant::now();
        let outcome = admitter.pass().await.expect("admission pass");
        let took = started.elapsed();
        let peak = PEAK.load(Ordering::Relaxed) - base;
        drop(admitter);
        let (seen, _) = server.await.unwrap();
        let writes = seen.iter().filter(|(m, _)| m != "GET").count();
        assert_eq!(outcome.admitted.len(), 1);
        println!(
            "{n:<8} {:>10} {writes:>8} {:>16} {:>14}",
            format!("{took:.1?}"),
            mib(peak),
            mib(rss()),
        );
        drop(writer);
    });
}
