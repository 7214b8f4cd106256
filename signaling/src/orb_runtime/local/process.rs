//! The pod's part of the local runtime: an orb attempt as a child process with the operator's
//! launch arguments, its log, its readiness probe, SIGTERM then SIGKILL, and its exit.

use super::*;

/// The running process of one attempt: the pod of the local world.
pub(super) struct Proc {
    pub(super) attempt: i32,
    /// Its HTTP port (probes, a warm orb's assignment).
    pub(super) port: u16,
    pub(super) ready: bool,
    /// SIGTERM was sent (the pod is being deleted).
    pub(super) stopping: bool,
    pub(super) exit: Option<Exit>,
    pub(super) stop: Option<oneshot::Sender<()>>,
}

impl Proc {
    /// Asks the process to stop (SIGTERM, SIGKILL after the grace period); false if it was not
    /// running or already asked.
    pub(super) fn request_stop(&mut self) -> bool {
        if self.stopping || self.exit.is_some() {
            return false;
        }
        self.stopping = true;
        self.ready = false;
        self.stop.take().is_some_and(|stop| stop.send(()).is_ok())
    }
}

impl State {
    /// Starts attempt `attempt` of the orb: the operator's pod arguments, as a process.
    pub(super) fn spawn(
        &mut self,
        uid: &str,
        attempt: i32,
        clock: &OrbClock,
        now: Timestamp,
        limits: &policy::OrbLimits,
    ) {
        let Some(signaling) = self.signaling.clone() else {
            warn!("an orb was due before the server listened; it starts on the next event");
            return;
        };
        let orb = self.orbs.get(uid).expect("present");
        let room = orb.spec.room_id.clone();
        // The operator's launch of the orb, as a process instead of a pod.
        let args = policy::launch(&orb.spec, limits, clock, now, &signaling).args;
        let env = self
            .orb_token(orb, clock, limits, now)
            .map(|token| ("ORB_SIGNALING_TOKEN", token))
            .into_iter()
            .collect();
        let proc = self.start_process(&room, uid, attempt, args, env);
        self.orbs.get_mut(uid).expect("present").proc = Some(proc);
    }

    /// The orb's room token, when signaling checks tokens: the operator's claims, minted here.
    pub(super) fn orb_token(
        &self,
        orb: &Orb,
        clock: &OrbClock,
        limits: &policy::OrbLimits,
        now: Timestamp,
    ) -> Option<String> {
        let key = self.settings.signing_key.as_ref()?;
        Some(key.mint(&policy::orb_token_claims(
            &orb.spec, &orb.name, &orb.uid, clock, limits, now,
        )))
    }

    /// Starts one orb process. `log_name` names its log (`orb-<log_name>.log`) and termination
    /// log; its supervisor reports under `key` and `attempt`.
    pub(super) fn start_process(
        &self,
        log_name: &str,
        key: &str,
        attempt: i32,
        mut args: Vec<String>,
        env: Vec<(&str, String)>,
    ) -> Proc {
        let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
            Ok(a) => a.port(),
            Err(e) => {
                warn!(error = %e, "no free port for the orb's HTTP server");
                0
            }
        };
        let termination_log = self.settings.log_dir.join(format!("orb-{log_name}.termination-log"));
        let _ = std::fs::remove_file(&termination_log);
        args.push(format!("--http-addr=127.0.0.1:{port}"));
        args.push(format!("--termination-log={}", termination_log.display()));

        let binary = self.settings.orb_binary();
        let mut cmd = tokio::process::Command::new(&binary);
        // The log is a file: no terminal colours in it.
        cmd.args(&args)
            .envs(env)
            .env("NO_COLOR", "1")
            .envs(local_candidate_policy())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match self.open_log(log_name).and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((out, err)) => {
                cmd.stdout(out).stderr(err);
            }
            Err(e) => {
                warn!(%log_name, error = %e, "cannot open the orb log; its output is discarded");
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGTERM the orb if
        // signaling dies without stopping it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let (stop_tx, stop_rx) = oneshot::channel();
        match cmd.spawn() {
            Ok(child) => {
                self.stats.processes_started.fetch_add(1, Ordering::Relaxed);
                let pid = child.id();
                let shown = args.join(" ");
                self.note(
                    log_name,
                    &format!(
                        "started {} {shown} (pid {}, attempt {attempt})",
                        binary.display(),
                        pid.unwrap_or(0)
                    ),
                );
                tokio::spawn(supervise(
                    child,
                    port,
                    stop_rx,
                    termination_log,
                    self.tx.clone(),
                    key.to_owned(),
                    attempt,
                ));
                Proc {
                    attempt,
                    port,
                    ready: false,
                    stopping: false,
                    exit: None,
                    stop: Some(stop_tx),
                }
            }
            Err(e) => {
                self.note(log_name, &format!("cannot start {}: {e}", binary.display()));
                Proc {
                    attempt,
                    port,
                    ready: false,
                    stopping: false,
                    exit: Some(Exit {
                        code: Some(127),
                        message: Some(format!("Error cannot start {}: {e}", binary.display())),
                    }),
                    stop: None,
                }
            }
        }
    }

    pub(super) fn open_log(&self, room: &str) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path(&self.settings.log_dir, room))
    }

    /// A lifecycle line in the room's orb log and the server's log.
    pub(super) fn note(&self, room: &str, line: &str) {
        info!(%room, "{line}");
        if let Ok(mut f) = self.open_log(room) {
            let _ = writeln!(f, "{} [orb-runtime] {line}", Timestamp::now());
        }
    }
}

/// Watches one orb process: probes its readiness, stops it on request (SIGTERM, then SIGKILL after
/// the grace period) and reports its exit with the termination message it wrote.
pub(super) async fn supervise(
    mut child: tokio::process::Child,
    port: u16,
    mut stop: oneshot::Receiver<()>,
    termination_log: PathBuf,
    tx: mpsc::UnboundedSender<Command>,
    uid: String,
    attempt: i32,
) {
    let mut stopping = false;
    let mut probe = tokio::time::interval(PROBE_INTERVAL);
    let kill = tokio::time::sleep(Duration::from_secs(u64::MAX / 4));
    tokio::pin!(kill);
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            r = &mut stop, if !stopping => {
                stopping = true;
                if r.is_ok() {
                    if let Some(pid) = child.id() {
                        // SAFETY: sending a signal to our own child process.
                        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
                    }
                    kill.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(TERMINATION_GRACE_SECONDS as u64));
                } else {
                    // The runtime is gone: do not leave the orb behind.
                    let _ = child.start_kill();
                }
            }
            _ = &mut kill, if stopping => {
                warn!(%uid, "the orb did not stop within the grace period; killing it");
                let _ = child.start_kill();
                kill.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(3600));
            }
            _ = probe.tick(), if !stopping => {
                // Every result, not only changes: a warm orb is ready twice (warm, then joined)
                // and the runtime resets its view in between.
                let ready = probe_ready(port).await;
                let _ = tx.send(Command::Probe { uid: uid.clone(), attempt, ready });
            }
        }
    };
    let code = status.ok().and_then(|s| s.code());
    let message = std::fs::read_to_string(&termination_log)
        .ok()
        .map(|m| m.trim().to_owned())
        .filter(|m| !m.is_empty());
    let _ = tx.send(Command::Exited {
        uid,
        attempt,
        exit: Exit { code, message },
    });
}

/// `GET /readyz` on the orb's HTTP port: true on a 200.
pub(super) async fn probe_ready(port: u16) -> bool {
    matches!(
        orb_telemetry::probe::get(("127.0.0.1", port), "/readyz", Duration::from_secs(2)).await,
        Ok((200, _))
    )
}

/// Local orbs talk to browsers on this machine or its network, whose candidates are loopback,
/// private or mDNS addresses: the orb's candidate deny list is off (an empty
/// `ORB_DENIED_CANDIDATE_CIDRS`) unless signaling's own environment sets one for its orbs.
fn local_candidate_policy() -> Option<(&'static str, &'static str)> {
    const VAR: &str = "ORB_DENIED_CANDIDATE_CIDRS";
    std::env::var_os(VAR).is_none().then_some((VAR, ""))
}
