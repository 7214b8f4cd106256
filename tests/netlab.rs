//! A network lab on one machine: network namespaces joined by veth pairs, with NAT routers
//! (nftables masquerade) between "sites" and an "internet", so that a call's media crosses real
//! NATs. Nothing leaves the namespaces: every address is one the lab gives out, and the lab
//! deletes its namespaces (and with them every interface and rule) when dropped.
//!
//! ```text
//!   site host 192.168.N.10 ── lan ── router ── wan 198.51.100.R ──┐
//!                                                               bridge 198.51.100.1 (internet)
//!   site host 10.244.0.10  ── lan ── router ── wan 198.51.100.S ──┘
//! ```
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables); [`Lab::unavailable`] says what is missing.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The internet's address, where servers that everyone reaches listen (signaling, the relay).
pub const INTERNET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// How a site's router translates addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// Endpoint-independent mapping (ports kept where possible), address- and port-dependent
    /// filtering (conntrack): a home router. STUN gives a usable reflexive address.
    Cone,
    /// A new random port for every destination: a reflexive address learnt from one server is
    /// useless towards any other peer, so only a relay can carry media.
    Symmetric,
}

/// A site behind a router.
#[derive(Clone, Copy, Debug)]
pub struct SiteSpec {
    pub nat: Nat,
    /// The router forwards no UDP at all (TCP only): a network that blocks UDP.
    pub block_udp: bool,
}

impl SiteSpec {
    pub const HOME: SiteSpec = SiteSpec {
        nat: Nat::Cone,
        block_udp: false,
    };
    pub const SYMMETRIC: SiteSpec = SiteSpec {
        nat: Nat::Symmetric,
        block_udp: false,
    };
    pub const UDP_BLOCKED: SiteSpec = SiteSpec {
        nat: Nat::Cone,
        block_udp: true,
    };
}

/// A namespace a program can run in.
#[derive(Clone, Debug)]
pub struct Host {
    pub ns: String,
    pub addr: Ipv4Addr,
}

pub struct Lab {
    prefix: String,
    namespaces: std::sync::Mutex<Vec<String>>,
    sites: AtomicUsize,
}

fn ip(args: &[&str]) {
    sh(Command::new("ip").args(args));
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn nft(ns: &str, rules: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("nft");
    child.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft in {ns}: {}\n{rules}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    /// Why the lab cannot be built here, if it cannot.
    pub fn unavailable() -> Option<String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Some("network namespaces need root".into());
        }
        for tool in ["ip", "nft"] {
            let found = Command::new(tool).arg("-V").output().is_ok_and(|o| o.status.success());
            if !found {
                return Some(format!("`{tool}` is not installed (./scripts/install-deps.sh)"));
            }
        }
        None
    }

    /// An empty internet: a bridge at [`INTERNET`] in its own namespace.
    pub fn new(name: &str) -> Lab {
        remove_abandoned_labs();
        let lab = Lab {
            prefix: format!("orblab-{}-{name}", std::process::id()),
            namespaces: Default::default(),
            sites: AtomicUsize::new(0),
        };
        let inet = lab.namespace("internet");
        ip(&["-n", &inet, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &inet, "addr", "add", &format!("{INTERNET}/24"), "dev", "br0"]);
        ip(&["-n", &inet, "link", "set", "br0", "up"]);
        // Private addresses are not routed on the internet: packets to them vanish (a sender
        // sees no error, as on a real network) instead of failing with "network unreachable".
        let void = lab.namespace("void");
        ip(&[
            "-n", &inet, "link", "add", "void", "type", "veth", "peer", "name", "sink", "netns", &void,
        ]);
        ip(&["-n", &void, "link", "set", "sink", "up"]);
        ip(&["-n", &inet, "link", "set", "void", "up"]);
        ip(&["-n", &inet, "route", "add", "default", "dev", "void"]);
        lab
    }

    fn namespace(&self, name: &str) -> String {
        let ns = format!("{}-{name}", self.prefix);
        // A namespace left by a crashed run of the same pid is replaced.
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        self.namespaces.lock().unwrap().push(ns.clone());
        ns
    }

    /// The internet, where servers everyone reaches run.
    pub fn internet(&self) -> Host {
        Host {
            ns: format!("{}-internet", self.prefix),
            addr: INTERNET,
        }
    }

    /// A site: a host at `<lan>.10` behind a router at `<lan>.1` whose internet side is
    /// `198.51.100.<n + 10>`; `lan` is the first three octets, e.g. `"192.168.1"`.
    pub fn site(&self, name: &str, lan: &str, spec: SiteSpec) -> Host {
        let n = self.sites.fetch_add(1, Ordering::SeqCst);
        let inet = self.internet().ns;
        let router = self.namespace(&format!("{name}-router"));
        let host = self.namespace(name);
        let wan_addr = Ipv4Addr::new(198, 51, 100, 10 + n as u8);
        let bridge_port = format!("w{n}");
        // Created inside the namespaces, so names never meet another lab's in the root namespace.
        ip(&[
            "-n",
            &router,
            "link",
            "add",
            "wan",
            "type",
            "veth",
            "peer",
            "name",
            &bridge_port,
            "netns",
            &inet,
        ]);
        ip(&["-n", &inet, "link", "set", &bridge_port, "master", "br0"]);
        ip(&["-n", &inet, "link", "set", &bridge_port, "up"]);
        ip(&["-n", &router, "addr", "add", &format!("{wan_addr}/24"), "dev", "wan"]);
        ip(&["-n", &router, "link", "set", "wan", "up"]);
        ip(&[
            "-n", &router, "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", &host,
        ]);
        ip(&["-n", &router, "addr", "add", &format!("{lan}.1/24"), "dev", "lan"]);
        ip(&["-n", &router, "link", "set", "lan", "up"]);
        let host_addr: Ipv4Addr = format!("{lan}.10").parse().unwrap();
        ip(&["-n", &host, "addr", "add", &format!("{host_addr}/24"), "dev", "eth0"]);
        ip(&["-n", &host, "link", "set", "eth0", "up"]);
        ip(&["-n", &host, "route", "add", "default", "via", &format!("{lan}.1")]);
        sh(Command::new("ip").args(["netns", "exec", &router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]));
        let masquerade = match spec.nat {
            Nat::Cone => "masquerade",
            Nat::Symmetric => "masquerade fully-random",
        };
        let block_udp = if spec.block_udp {
            "table inet filter {\n  chain forward {\n    type filter hook forward priority 0;\n    meta l4proto udp drop\n  }\n}\n"
        } else {
            ""
        };
        nft(
            &router,
            &format!(
                "table ip nat {{\n  chain postrouting {{\n    type nat hook postrouting priority 100;\n    oifname \"wan\" {masquerade}\n  }}\n}}\n{block_udp}"
            ),
        );
        Host {
            ns: host,
            addr: host_addr,
        }
    }
}

impl Lab {
    /// The site's network dies for everything but the TCP connections to `keep` on the internet
    /// (signaling's socket): its router forwards nothing else, as when the path of a call's
    /// media breaks. [`Lab::restore`] ends it.
    pub fn cut_off(&self, site: &Host, keep: u16) {
        nft(
            &format!("{}-router", site.ns),
            &format!(
                "table inet cut {{\n  chain forward {{\n    type filter hook forward priority -10;\n    ip daddr {INTERNET} tcp dport {keep} accept\n    ip saddr {INTERNET} tcp sport {keep} accept\n    drop\n  }}\n}}\n"
            ),
        );
    }

    /// Undoes [`Lab::cut_off`].
    pub fn restore(&self, site: &Host) {
        nft(&format!("{}-router", site.ns), "delete table inet cut\n");
    }
}

/// Namespaces of labs whose test process is gone (killed before it could clean up).
fn remove_abandoned_labs() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let ns = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = ns.strip_prefix("orblab-").and_then(|rest| rest.split('-').next()) else {
            continue;
        };
        if !std::path::Path::new("/proc").join(pid).exists() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.lock().unwrap().drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

/// Runs `f` on a thread that has entered `ns`: sockets it opens live in that namespace.
pub fn in_namespace<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("namespace file");
            // SAFETY: setns on this thread only, with a namespace file descriptor we own.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread")
    })
}

impl Host {
    /// `program` run inside this host's namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).arg(program);
        cmd
    }

    /// A loopback port of the test's own namespace that leads to `127.0.0.1:port` inside this
    /// host (a WebDriver or a metrics endpoint): for the test's control, never for media.
    pub fn forward(&self, port: u16) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap().port();
        let ns = self.ns.clone();
        std::thread::spawn(move || {
            for downstream in listener.incoming().flatten() {
                let ns = ns.clone();
                std::thread::spawn(move || {
                    let Ok(upstream) = in_namespace(&ns, || TcpStream::connect(("127.0.0.1", port))) else {
                        return;
                    };
                    pipe(downstream, upstream);
                });
            }
        });
        local
    }

    /// Waits until something listens on `port` of `addr` inside this host.
    pub fn wait_for_port(&self, addr: Ipv4Addr, port: u16, patience: std::time::Duration) {
        let started = std::time::Instant::now();
        while in_namespace(&self.ns, || TcpStream::connect((addr, port))).is_err() {
            assert!(
                started.elapsed() < patience,
                "{addr}:{port} never opened in {}",
                self.ns
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// `GET path` from `addr:port` as seen from inside this host; the body.
    pub fn http_get(&self, addr: Ipv4Addr, port: u16, path: &str) -> Option<String> {
        let mut stream = in_namespace(&self.ns, || TcpStream::connect((addr, port))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
        let mut out = String::new();
        stream.read_to_string(&mut out).ok()?;
        out.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
    }
}

fn pipe(a: TcpStream, b: TcpStream) {
    let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let (mut a, mut b) = (a, b);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut a, &mut b2);
        let _ = b2.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut b, &mut a2);
    let _ = a2.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}
