//! `--orb-runtime=local`: orbs as child processes on this machine, for development without a
//! cluster. A small operator in one task: it keeps per-room records shaped like an AiOrb's status
//! (phase, admission time, restarts, presence) and drives them with the operator's own pure policy
//! (`orb_policy`: `plan_admission` for the cap and the FIFO queue, `decide` for every
//! step), so dev mode enforces the same admission, lifetime, idle, empty-room and termination rules
//! as the cluster. The orb's pod becomes a process: running, ready (its `/readyz`), exited 0
//! (`Succeeded`, with the termination message it wrote), exited otherwise (`Failed`). Terminating
//! is SIGTERM, then SIGKILL after the pod grace period. Each orb's output goes to
//! `<log-dir>/orb-<room>.log`, as the seed's per-orb logs did.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use orb_api::auth::SigningKey;
use orb_api::{AiOrbSpec, OrbPhase, TerminationReason, naming};
use orb_policy::TERMINATION_GRACE_SECONDS;
use orb_policy::{self as policy, AdmissionEntry, Limits, OrbClock, OrbView, PodState, SessionBudgets, Step};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::kubernetes::ai_status_for;
use super::{OrbCheck, OrbEvents, OrbRequest, OrbRuntime, Presence};
use crate::metrics::OrbRequestResult;
use crate::protocol::AiStatus;

/// How often a running orb's `/readyz` is probed (the kubelet's readiness probe).
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// Passes of admission + decisions after one event: a finished orb frees capacity for the next.
const MAX_PASSES: usize = 4;

/// How the local runtime starts orbs.
#[derive(Clone, Debug)]
pub struct LocalSettings {
    /// The `orb` binary; `None`: `orb` next to this binary, else on `PATH`.
    pub orb_binary: Option<PathBuf>,
    /// Where orbs reach signaling; `None`: this server's own address.
    pub signaling_url: Option<String>,
    /// Where `orb-<room>.log` files go.
    pub log_dir: PathBuf,
    /// The operator's limits: cap, lifetime, idle timeout, empty-room grace, restarts.
    pub limits: Limits,
    /// Start orbs with `spec.testMode` (test brain, test-mode lifetime cap).
    pub test_mode: bool,
    /// Mints each orb's room token when signaling checks tokens.
    pub signing_key: Option<SigningKey>,
    /// Warm orbs to keep started and unbound ([`pool`]); 0 starts every orb cold.
    pub warm_orbs: usize,
}

impl LocalSettings {
    fn orb_binary(&self) -> PathBuf {
        if let Some(p) = &self.orb_binary {
            return p.clone();
        }
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("orb")))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("orb"))
    }
}

/// The per-orb log file of a room.
pub fn log_path(log_dir: &Path, room_id: &str) -> PathBuf {
    log_dir.join(format!("orb-{room_id}.log"))
}

enum Command {
    Request(OrbRequest),
    Presence(String, Presence),
    Serve(SocketAddr),
    Probe {
        uid: String,
        attempt: i32,
        ready: bool,
    },
    Exited {
        uid: String,
        attempt: i32,
        exit: Exit,
    },
    /// A warm orb's answer to its assignment.
    Assigned {
        key: String,
        result: Result<(u16, String), String>,
    },
    /// Is this uid the room's live orb?
    CheckOrb {
        room_id: String,
        uid: String,
        reply: oneshot::Sender<OrbCheck>,
    },
    Shutdown(oneshot::Sender<()>),
}

#[derive(Clone, Debug)]
struct Exit {
    code: Option<i32>,
    /// The termination message the orb wrote (its end reason first).
    message: Option<String>,
}

pub struct LocalRuntime {
    tx: mpsc::UnboundedSender<Command>,
    stats: Arc<LocalStats>,
}

/// Counts of the local runtime, for tests, the benchmark and the dev-mode operator's view.
#[derive(Debug, Default)]
pub struct LocalStats {
    /// Warm orbs ready and unbound.
    pub warm_ready: AtomicUsize,
    /// Orb processes started, warm ones included.
    pub processes_started: AtomicUsize,
    /// Orbs bound to a warm orb.
    pub warm_bound: AtomicUsize,
}

impl LocalRuntime {
    /// Starts the runtime's loop. Orbs are started once [`LocalRuntime::serve_at`] said where
    /// signaling listens.
    pub fn start(settings: LocalSettings, events: OrbEvents) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Err(e) = std::fs::create_dir_all(&settings.log_dir) {
            warn!(dir = %settings.log_dir.display(), error = %e, "cannot create the orb log directory");
        }
        info!(
            orb = %settings.orb_binary().display(),
            logs = %settings.log_dir.display(),
            cap = settings.limits.max_concurrent_orbs,
            "starting orbs as local processes under the operator's policy"
        );
        let stats = Arc::new(LocalStats::default());
        let state = State {
            stats: stats.clone(),
            settings,
            events,
            tx: tx.clone(),
            signaling: None,
            orbs: BTreeMap::new(),
            presence: HashMap::new(),
            sessions: SessionBudgets::new(),
            generation: 0,
            pool: BTreeMap::new(),
            bound: HashMap::new(),
            warm_started: 0,
        };
        tokio::spawn(state.run(rx));
        Self { tx, stats }
    }

    pub fn stats(&self) -> &LocalStats {
        &self.stats
    }

    /// Where orbs reach signaling (the server's bound address; an unspecified IP means loopback).
    pub fn serve_at(&self, addr: SocketAddr) {
        let _ = self.tx.send(Command::Serve(addr));
    }
}

impl OrbRuntime for LocalRuntime {
    fn request_orb(&self, request: OrbRequest) {
        let _ = self.tx.send(Command::Request(request));
    }

    fn report_presence(&self, room_id: &str, presence: Presence) {
        let _ = self.tx.send(Command::Presence(room_id.to_owned(), presence));
    }

    fn check_orb(&self, room_id: &str, orb_uid: &str) -> BoxFuture<'static, OrbCheck> {
        let (reply, answer) = oneshot::channel();
        let sent = self.tx.send(Command::CheckOrb {
            room_id: room_id.to_owned(),
            uid: orb_uid.to_owned(),
            reply,
        });
        Box::pin(async move {
            match sent {
                Ok(()) => answer.await.unwrap_or(OrbCheck::Unavailable),
                Err(_) => OrbCheck::Unavailable,
            }
        })
    }

    /// Stops every orb (SIGTERM, SIGKILL after the grace period) and waits for them.
    fn shutdown(&self) -> BoxFuture<'static, ()> {
        let (done, wait) = oneshot::channel();
        let sent = self.tx.send(Command::Shutdown(done)).is_ok();
        Box::pin(async move {
            if sent {
                let _ = wait.await;
            }
        })
    }
}

mod lifecycle;
mod pool;
mod process;

use pool::{WARM_KEY_PREFIX, WarmProc};
use process::Proc;

/// One orb: an AiOrb's spec and status, kept in memory.
struct Orb {
    uid: String,
    name: String,
    spec: AiOrbSpec,
    created: Timestamp,
    phase: Option<OrbPhase>,
    admitted_at: Option<Timestamp>,
    session_started_at: Option<Timestamp>,
    finished_at: Option<Timestamp>,
    restarts: i32,
    reason: Option<TerminationReason>,
    failed_since: Option<Timestamp>,
    queue_position: Option<i32>,
    proc: Option<Proc>,
    requeue_at: Option<Timestamp>,
    reported: Option<AiStatus>,
    /// The warm orb it is being bound to, until the assignment answers.
    binding: Option<String>,
    /// An assignment failed: later attempts start cold.
    cold_only: bool,
}

impl Orb {
    /// A newly created orb: no status yet, no process.
    fn new(uid: String, name: String, spec: AiOrbSpec) -> Self {
        Self {
            uid,
            name,
            spec,
            created: Timestamp::now(),
            phase: None,
            admitted_at: None,
            session_started_at: None,
            finished_at: None,
            restarts: 0,
            reason: None,
            failed_since: None,
            queue_position: None,
            proc: None,
            requeue_at: None,
            reported: None,
            binding: None,
            cold_only: false,
        }
    }

    fn pod_state(&self) -> PodState {
        match &self.proc {
            None => PodState::Missing,
            Some(Proc { exit: Some(e), .. }) => match e.code {
                Some(0) => PodState::Succeeded {
                    message: e.message.clone(),
                },
                code => PodState::Failed {
                    reason: None,
                    message: e.message.clone().or_else(|| {
                        Some(match code {
                            Some(c) => format!("the orb exited with code {c}"),
                            None => "the orb was killed by a signal".to_owned(),
                        })
                    }),
                },
            },
            Some(Proc { stopping: true, .. }) => PodState::Deleting { grace_ends: None },
            Some(p) => PodState::Running {
                ready: p.ready,
                node: Some("local".into()),
            },
        }
    }
}

struct State {
    stats: Arc<LocalStats>,
    settings: LocalSettings,
    events: OrbEvents,
    tx: mpsc::UnboundedSender<Command>,
    signaling: Option<String>,
    orbs: BTreeMap<String, Orb>,
    presence: HashMap<String, Presence>,
    /// Lifetime budgets of recent sessions (the operator keeps them in its admission ledger).
    sessions: SessionBudgets,
    generation: u64,
    /// Unbound warm orbs by name.
    pool: BTreeMap<String, WarmProc>,
    /// Warm process keys bound to an orb: its uid and attempt.
    bound: HashMap<String, (String, i32)>,
    warm_started: u64,
}

fn timestamp(t: std::time::SystemTime) -> Timestamp {
    Timestamp::try_from(t).unwrap_or_else(|_| Timestamp::now())
}

impl State {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        loop {
            let wake = self.orbs.values().filter_map(|o| o.requeue_at).min();
            // Never negative (a due deadline wakes at once), never a hot loop.
            let sleep = wake.map(|at| {
                let wait = Timestamp::now().duration_until(at).max(SignedDuration::ZERO);
                wait.unsigned_abs().max(Duration::from_millis(10))
            });
            let cmd = match sleep {
                Some(d) => tokio::select! {
                    cmd = rx.recv() => Some(cmd),
                    // A little slack so the deadline is due when we look.
                    _ = tokio::time::sleep(d + Duration::from_millis(5)) => None,
                },
                None => Some(rx.recv().await),
            };
            match cmd {
                Some(None) => return,
                Some(Some(Command::Shutdown(done))) => {
                    self.shutdown(&mut rx).await;
                    let _ = done.send(());
                    return;
                }
                Some(Some(cmd)) => self.handle(cmd),
                None => {}
            }
            self.reconcile(Timestamp::now());
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Request(request) => self.request(request),
            Command::Presence(room, presence) => {
                let known = self.orbs.values().any(|o| o.spec.room_id == room);
                if known || presence.humans > 0 {
                    self.presence.insert(room, presence);
                } else {
                    self.presence.remove(&room);
                }
            }
            Command::Serve(addr) => {
                let ip = if addr.ip().is_unspecified() {
                    std::net::IpAddr::from([127, 0, 0, 1])
                } else {
                    addr.ip()
                };
                let own = format!("ws://{}", SocketAddr::new(ip, addr.port()));
                self.signaling = Some(self.settings.signaling_url.clone().unwrap_or(own));
            }
            Command::Probe { uid, attempt, ready } => {
                if let Some(w) = self.unbound_warm(&uid) {
                    w.proc.ready = ready && !w.proc.stopping;
                    return;
                }
                let Some((uid, attempt)) = self.owner(&uid, attempt) else {
                    return;
                };
                if self.orbs.get(&uid).is_some_and(|o| o.binding.is_some()) {
                    // Until its assignment answers, its readiness is the warm one.
                    return;
                }
                if let Some(p) = self.proc_mut(&uid, attempt) {
                    p.ready = ready && !p.stopping && p.exit.is_none();
                }
            }
            Command::Exited {
                uid: key,
                attempt,
                exit,
            } => {
                if let Some(name) = key.strip_prefix(WARM_KEY_PREFIX).map(str::to_owned)
                    && !self.bound.contains_key(&key)
                {
                    if self.pool.get(&name).is_some_and(|w| !w.proc.stopping) {
                        let detail = exit.message.clone().unwrap_or_default();
                        self.note(&name, &format!("warm orb exited (exit code {:?}) {detail}", exit.code));
                    }
                    if let Some(w) = self.pool.get_mut(&name) {
                        w.proc.exit = Some(exit);
                        w.proc.ready = false;
                    }
                    return;
                }
                let Some((uid, attempt)) = self.owner(&key, attempt) else {
                    return;
                };
                self.bound.remove(&key);
                if let Some(orb) = self.orbs.get(&uid) {
                    let detail = exit.message.clone().unwrap_or_default();
                    let line = format!("orb exited (attempt {attempt}, exit code {:?}) {detail}", exit.code);
                    self.note(&orb.spec.room_id, &line);
                }
                if let Some(p) = self.proc_mut(&uid, attempt) {
                    p.exit = Some(exit);
                    p.ready = false;
                    p.stop = None;
                }
            }
            Command::Assigned { key, result } => self.assigned(&key, result),
            Command::CheckOrb { room_id, uid, reply } => {
                // Several dev replicas each run their own orbs: a room this runtime has no orb
                // for, and a uid it never made, may be another replica's.
                let known = self.orbs.contains_key(&uid);
                let check = match self.live_orb(&room_id) {
                    Some(live) if live.uid == uid => OrbCheck::Live,
                    Some(_) => OrbCheck::Stale,
                    None if known => OrbCheck::Stale,
                    None => OrbCheck::Unknown,
                };
                let _ = reply.send(check);
            }
            Command::Shutdown(_) => unreachable!("handled by the loop"),
        }
    }

    /// The orb and attempt a process reports for: a room orb's own key, or a bound warm orb's.
    fn owner(&self, key: &str, attempt: i32) -> Option<(String, i32)> {
        if key.starts_with(WARM_KEY_PREFIX) {
            self.bound.get(key).cloned()
        } else {
            Some((key.to_owned(), attempt))
        }
    }

    /// Whether the process reporting under `key` and `attempt` is one this runtime still runs.
    fn running_proc(&mut self, key: &str, attempt: i32) -> bool {
        if let Some(w) = self.unbound_warm(key) {
            return w.proc.exit.is_none();
        }
        self.owner(key, attempt)
            .is_some_and(|(uid, attempt)| self.proc_mut(&uid, attempt).is_some_and(|p| p.exit.is_none()))
    }

    fn unbound_warm(&mut self, key: &str) -> Option<&mut WarmProc> {
        let name = key.strip_prefix(WARM_KEY_PREFIX)?;
        if self.bound.contains_key(key) {
            return None;
        }
        self.pool.get_mut(name)
    }

    fn proc_mut(&mut self, uid: &str, attempt: i32) -> Option<&mut Proc> {
        self.orbs
            .get_mut(uid)
            .and_then(|o| o.proc.as_mut())
            .filter(|p| p.attempt == attempt)
    }

    fn live_orb(&self, room_id: &str) -> Option<&Orb> {
        self.orbs
            .values()
            .find(|o| o.spec.room_id == room_id && !o.phase.is_some_and(OrbPhase::is_terminal))
    }

    fn request(&mut self, request: OrbRequest) {
        if let Some(orb) = self.live_orb(&request.room_id) {
            let status = ai_status_for(orb.phase);
            self.events.request_result(OrbRequestResult::Existing);
            self.events.status(&request.room_id, status);
            return;
        }
        let finished: Vec<String> = self
            .orbs
            .values()
            .filter(|o| o.spec.room_id == request.room_id)
            .map(|o| o.uid.clone())
            .collect();
        let replaced = !finished.is_empty();
        for uid in finished {
            self.orbs.remove(&uid);
        }
        // Presence from the room's previous life is stale; the joiner's report follows this request.
        self.presence.remove(&request.room_id);
        self.generation += 1;
        let spec = AiOrbSpec {
            room_id: request.room_id.clone(),
            coach_id: request.coach_id.clone(),
            client_id: request.client_id.clone(),
            session_id: request.session_id.clone(),
            test_mode: self.settings.test_mode,
            ..AiOrbSpec::default()
        };
        let name = naming::orb_name_for_room(&request.room_id);
        let uid = format!("{name}-{}", self.generation);
        self.note(&request.room_id, "orb requested: the first participant joined");
        self.orbs.insert(uid.clone(), Orb::new(uid, name, spec));
        self.events.request_result(if replaced {
            OrbRequestResult::Replaced
        } else {
            OrbRequestResult::Created
        });
    }

    /// Admission, then one decision per orb, repeated while something finished (capacity freed).
    fn reconcile(&mut self, now: Timestamp) {
        for _ in 0..MAX_PASSES {
            self.admit(now);
            let uids: Vec<String> = self.orbs.keys().cloned().collect();
            let mut freed = false;
            for uid in uids {
                freed |= self.step(&uid, now);
            }
            if !freed {
                break;
            }
        }
        self.keep_pool(now);
        self.report();
    }

    /// Terminates every orb and waits for the processes (bounded by the grace period).
    async fn shutdown(&mut self, rx: &mut mpsc::UnboundedReceiver<Command>) {
        let mut running = 0;
        let procs = self
            .orbs
            .values_mut()
            .filter_map(|o| o.proc.as_mut())
            .chain(self.pool.values_mut().map(|w| &mut w.proc));
        for p in procs.filter(|p| p.exit.is_none()) {
            if let Some(stop) = p.stop.take() {
                let _ = stop.send(());
            }
            running += 1;
        }
        if running > 0 {
            info!(running, "stopping the local orbs");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(TERMINATION_GRACE_SECONDS as u64 + 2);
        while running > 0 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Command::Exited { uid, attempt, exit })) => {
                    // Only the processes counted above: a process stopped earlier (a failed
                    // assignment's) may report its exit too.
                    if self.running_proc(&uid, attempt) {
                        running -= 1;
                    }
                    self.handle(Command::Exited { uid, attempt, exit });
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::SystemTime;

    use crate::metrics::Metrics;
    use crate::orb_runtime::OrbEvent;

    fn here(humans: u32) -> Presence {
        Presence {
            humans,
            last_activity: SystemTime::now(),
        }
    }

    /// The next status change (an orb's end for good is no status change).
    async fn next_status(rx: &mut mpsc::UnboundedReceiver<OrbEvent>) -> (String, AiStatus) {
        loop {
            let e = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .expect("a status in time")
                .expect("the runtime is alive");
            if let OrbEvent::Status { room_id, status } = e {
                return (room_id, status);
            }
        }
    }

    fn fake_orb(dir: &Path, script: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let fake = dir.join("fake-orb");
        std::fs::write(&fake, format!("#!/bin/sh\n{script}\n")).unwrap();
        let mode = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
        std::fs::set_permissions(&fake, mode).unwrap();
        fake
    }

    /// A runtime starting `orb_binary` under `limits` (orb logs in `dir`), serving a placeholder
    /// signaling address, and its status events.
    fn start_runtime(
        dir: &Path,
        orb_binary: PathBuf,
        limits: Limits,
    ) -> (LocalRuntime, mpsc::UnboundedReceiver<OrbEvent>) {
        let (events, rx) = OrbEvents::new(Arc::new(Metrics::default()));
        let settings = LocalSettings {
            signaling_url: None,
            orb_binary: Some(orb_binary),
            log_dir: dir.to_owned(),
            limits,
            test_mode: false,
            signing_key: None,
            warm_orbs: 0,
        };
        let runtime = LocalRuntime::start(settings, events);
        runtime.serve_at(SocketAddr::from(([127, 0, 0, 1], 9)));
        (runtime, rx)
    }

    fn request(room: &str) -> OrbRequest {
        OrbRequest {
            room_id: room.into(),
            coach_id: None,
            client_id: None,
            session_id: None,
        }
    }

    /// An orb that fails while its room is occupied is replaced after the backoff, at most
    /// `max_restarts` times; then the orb is `Failed` and the room hears `unavailable`.
    #[tokio::test]
    async fn a_failing_orb_is_replaced_then_given_up() {
        let dir = std::env::temp_dir().join(format!("orb-local-failing-{}", std::process::id()));
        let limits = Limits {
            max_restarts: 2,
            restart_backoff: Duration::from_millis(50),
            ..Limits::default()
        };
        let (runtime, mut rx) = start_runtime(&dir, fake_orb(&dir, "exit 1"), limits);
        runtime.request_orb(request("r"));
        runtime.report_presence("r", here(2));
        assert_eq!(next_status(&mut rx).await, ("r".into(), AiStatus::Starting));
        assert_eq!(next_status(&mut rx).await, ("r".into(), AiStatus::Unavailable));
        let log = std::fs::read_to_string(log_path(&dir, "r")).unwrap();
        assert!(log.contains("replacement 1 of the failed orb"), "{log}");
        assert!(log.contains("replacement 2 of the failed orb"), "{log}");
        assert!(!log.contains("replacement 3"), "{log}");
        assert!(
            log.contains("orb ended: Failed Error (the orb exited with code 1)"),
            "{log}"
        );
        runtime.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Real processes (a stand-in orb that sleeps until signalled), the real policy: the cap
    /// queues the second room, and the first room's cleanup admits it.
    #[tokio::test]
    async fn the_cap_queues_and_a_room_cleanup_admits_the_next() {
        let dir = std::env::temp_dir().join(format!("orb-local-runtime-{}", std::process::id()));
        let limits = Limits {
            max_concurrent_orbs: 1,
            empty_room_grace: Duration::from_millis(200),
            ..Limits::default()
        };
        let (runtime, mut rx) = start_runtime(&dir, fake_orb(&dir, "exec sleep 600"), limits);
        for room in ["a", "b"] {
            runtime.request_orb(request(room));
            runtime.report_presence(room, here(1));
        }
        assert_eq!(next_status(&mut rx).await, ("a".into(), AiStatus::Starting));
        assert_eq!(next_status(&mut rx).await, ("b".into(), AiStatus::Queued));
        let log = std::fs::read_to_string(log_path(&dir, "b")).unwrap();
        assert!(log.contains("orb queued at position 1"), "{log}");

        runtime.report_presence("a", here(0));
        assert_eq!(next_status(&mut rx).await, ("a".into(), AiStatus::Ended));
        assert_eq!(next_status(&mut rx).await, ("b".into(), AiStatus::Starting));
        let log = std::fs::read_to_string(log_path(&dir, "a")).unwrap();
        assert!(log.contains("terminating the orb: RoomCleanup"), "{log}");
        assert!(log.contains("orb ended: Succeeded RoomCleanup"), "{log}");

        runtime.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_flags_default_to_the_operators_limits() {
        let config =
            crate::config::Config::parse_from(["orb-signaling", "--auth=none", "--orb-runtime=local"], None).unwrap();
        assert_eq!(config.local.limits, Limits::default());
        assert!(config.local.signing_key.is_none());
        let key = "k".repeat(32);
        let config =
            crate::config::Config::parse_from(["orb-signaling", "--max-concurrent-orbs=2"], Some(key)).unwrap();
        assert_eq!(config.local.limits.max_concurrent_orbs, 2);
        assert!(
            config.local.signing_key.is_some(),
            "orbs get tokens when signaling checks them"
        );
        assert!(
            crate::config::Config::parse_from(["orb-signaling", "--auth=none", "--max-concurrent-orbs=0"], None)
                .is_err()
        );
    }

    #[test]
    fn log_files_are_named_like_the_seeds() {
        assert_eq!(
            log_path(Path::new("logs"), "room123"),
            PathBuf::from("logs/orb-room123.log")
        );
    }

    #[test]
    fn an_exited_orb_maps_to_the_pod_states_the_policy_reads() {
        let mut orb = Orb::new("u".into(), "n".into(), AiOrbSpec::default());
        assert_eq!(orb.pod_state(), PodState::Missing);
        let proc = |exit: Option<Exit>, stopping| Proc {
            attempt: 0,
            port: 0,
            ready: true,
            stopping,
            exit,
            stop: None,
        };
        orb.proc = Some(proc(None, false));
        assert!(matches!(orb.pod_state(), PodState::Running { ready: true, .. }));
        orb.proc = Some(proc(None, true));
        assert_eq!(orb.pod_state(), PodState::Deleting { grace_ends: None });
        let ended = Exit {
            code: Some(0),
            message: Some("IdleTimeout no activity".into()),
        };
        orb.proc = Some(proc(Some(ended), true));
        assert_eq!(
            orb.pod_state(),
            PodState::Succeeded {
                message: Some("IdleTimeout no activity".into())
            }
        );
        orb.proc = Some(proc(
            Some(Exit {
                code: Some(1),
                message: None,
            }),
            false,
        ));
        assert!(matches!(orb.pod_state(), PodState::Failed { .. }));
    }
}
