//! The chart's TURN relay on a real coturn (Debian's `turnserver`): the `turnserver.conf` the chart
//! renders, its `denied-peer-ip` lines untouched, started through the relay container's own start
//! script (which appends the secret), in a network namespace of the test's own (addresses from the
//! documentation ranges on its loopback, nothing on the host's network); only the listening and
//! relay addresses, the pid file and the database are the test's. Credentials are minted per the
//! TURN REST convention, as signaling mints them. A valid credential allocates and relays to an allowed peer (coturn's own test
//! client and echo peer); permissions to cluster, metadata, loopback and other denied addresses,
//! IPv4 and IPv6, are refused with 403; an expired credential and one made with another secret
//! are refused with 401.
//!
//! Needs coturn (`scripts/install-deps.sh`) and root (a network namespace): without either the
//! test is skipped with a message, except under `CI`, where it fails.

mod support;

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use support::{Process, render, skip_unless_ci};

/// The relay's address (TEST-NET-1 and the IPv6 documentation range): not in any denied range.
const SERVER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// A peer on the internet (TEST-NET-2), where coturn's echo peer listens.
const PEER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const PEER_PORT: u16 = 3480;
const TURN_PORT: u16 = 3478;
/// The cluster's ranges as the test sets them, IPv4 and IPv6.
const CLUSTER_CIDRS: &str = "{10.96.0.0/12,10.244.0.0/16,fd00:10:96::/112}";
const SECRET: &str = "chart-test-turn-secret-0123456789";
/// Longest wait for a process to answer; a hang guard, not a timing expectation.
const HANG_GUARD: Duration = Duration::from_secs(60);

#[test]
fn the_chart_s_coturn_relays_for_minted_credentials_only_and_never_into_the_cluster() {
    let Some(tools) = coturn_tools() else { return };
    let objects = render(
        None,
        &[
            "--set",
            "turn.enabled=true",
            "--set",
            &format!("turn.publicHost={SERVER_V4}"),
            // The host-network form: the relay's own addresses are the public ones (no
            // external-ip mapping, which coturn applies to IPv6 relays too).
            "--set",
            "turn.hostNetwork=true",
            "--set",
            &format!("networkPolicy.clusterCIDRs={CLUSTER_CIDRS}"),
        ],
    );
    let conf = config_map_conf(&objects);
    assert!(conf.contains("\ndenied-peer-ip=10.96.0.0-10.111.255.255\n"), "{conf}");
    let relay_ports = relay_ports(&conf);
    // In a thread of its own: the network namespace is the thread's, and so is every process and
    // socket it makes; the test's other threads keep the host's network.
    let outcome = std::thread::spawn(move || {
        // SAFETY: unshare(2) with CLONE_NEWNET changes only the calling thread's namespaces.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            let error = std::io::Error::last_os_error();
            skip_unless_ci(
                "the real-coturn test",
                &format!("cannot create a network namespace ({error}): run it as root"),
            );
            return;
        }
        in_own_network(&tools, &objects, relay_ports, &Scratch::new());
    })
    .join();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The scenario, in a fresh network namespace.
fn in_own_network(tools: &Tools, objects: &[Value], relay_ports: (u16, u16), scratch: &Scratch) {
    ip(tools, &["link", "set", "lo", "up"]);
    for address in [format!("{SERVER_V4}/32"), format!("{PEER_V4}/32")] {
        ip(tools, &["addr", "add", &address, "dev", "lo"]);
    }
    ip(
        tools,
        &["-6", "addr", "add", &format!("{SERVER_V6}/128"), "dev", "lo", "nodad"],
    );

    // The relay's container as the chart renders it: its start script (which appends the secret
    // to the configuration) with the container's paths moved into the test's directory.
    let script = support::relay_start(objects, &scratch.dir, SECRET);
    let log = scratch.dir.join("turnserver.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let path = format!(
        "{}:{}",
        tools.turnserver.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Listening and relay addresses are the namespace's; pid file and database the test's.
    let _relay = Process(
        Command::new("sh")
            .args(["-c", &script, "coturn"])
            .env("PATH", path)
            .args([
                format!("--listening-ip={SERVER_V4}"),
                format!("--listening-ip={SERVER_V6}"),
                format!("--relay-ip={SERVER_V4}"),
                format!("--relay-ip={SERVER_V6}"),
            ])
            .arg(format!("--pidfile={}", scratch.dir.join("turnserver.pid").display()))
            .arg(format!("--userdb={}", scratch.dir.join("turndb").display()))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap(),
    );
    let _log_on_failure = LogOnFailure(log);
    let server = SocketAddr::new(SERVER_V4.into(), TURN_PORT);
    wait_for_binding(server);

    // (a) A credential minted from the secret allocates within the chart's relay ports, and
    // coturn's own client relays through it to its echo peer and back.
    let _peer = Process(
        Command::new(&tools.peer)
            .args(["-L", &PEER_V4.to_string(), "-p", &PEER_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_echo(SocketAddr::new(PEER_V4.into(), PEER_PORT));
    let (username, credential) = mint(SECRET, expiry_in(3600), "coach-1");
    let out = Command::new(&tools.uclient)
        .args(["-u", &username, "-w", &credential])
        .args(["-e", &PEER_V4.to_string(), "-r", &PEER_PORT.to_string()])
        // 20 messages, no RTCP channel, an IPv4 relay.
        .args(["-n", "20", "-c", "-X", &SERVER_V4.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let (sent, received) = relayed_counts(&text);
    assert!(
        out.status.success() && sent > 0 && received > 0,
        "no relay to an allowed peer:\n{text}"
    );

    let valid = |user: &str| mint(SECRET, expiry_in(3600), user);
    let v4 = Allocation::new(server, Family::V4, &valid("client-1")).expect("an IPv4 allocation");
    let (low, high) = relay_ports;
    assert_eq!(v4.relayed.ip(), IpAddr::from(SERVER_V4));
    assert!(
        (low..=high).contains(&v4.relayed.port()),
        "relayed port {} outside the chart's {low}-{high}",
        v4.relayed.port()
    );
    assert_eq!(v4.permit(PEER_V4.into()), Ok(()), "an internet peer");
    let v6 = Allocation::new(server, Family::V6, &valid("client-2")).expect("an IPv6 allocation");
    assert_eq!(v6.relayed.ip(), IpAddr::from(SERVER_V6));
    let internet_v6: IpAddr = "2001:db8:1::7".parse().unwrap();
    assert_eq!(v6.permit(internet_v6), Ok(()), "an IPv6 internet peer");

    // (b) Never into the cluster: its service and pod ranges, the cloud metadata address,
    // loopback, CGNAT; IPv6 cluster, link-local, loopback, unique-local and v4-mapped addresses.
    const FORBIDDEN_IP: u16 = 403;
    for peer in [
        "10.96.0.1",
        "10.111.255.254",
        "10.244.3.4",
        "169.254.169.254",
        "127.0.0.1",
        "100.64.0.1",
        "0.0.0.1",
        "0.0.0.0",
    ] {
        assert_eq!(v4.permit(peer.parse().unwrap()), Err(FORBIDDEN_IP), "{peer}");
    }
    for peer in [
        "fd00:10:96::5",
        "fe80::1",
        "::1",
        "::",
        "fc00::1",
        "::ffff:10.96.0.1",
        "::ffff:169.254.169.254",
    ] {
        assert_eq!(v6.permit(peer.parse().unwrap()), Err(FORBIDDEN_IP), "{peer}");
    }
    // The refusals are the ranges', not the allocation's: an allowed peer still passes after them.
    assert_eq!(v4.permit(PEER_V4.into()), Ok(()));

    // (c) Only current credentials of this secret: an expired one and one from another secret
    // are refused, as is a username changed after minting.
    const UNAUTHORIZED: u16 = 401;
    let expired = mint(SECRET, expiry_in(-60), "client-3");
    assert_eq!(Allocation::new(server, Family::V4, &expired).err(), Some(UNAUTHORIZED));
    let foreign = mint("another-secret-0123456789", expiry_in(3600), "client-4");
    assert_eq!(Allocation::new(server, Family::V4, &foreign).err(), Some(UNAUTHORIZED));
    let (username, credential) = valid("client-5");
    let renamed = (username.replace("client-5", "coach-9"), credential);
    assert_eq!(Allocation::new(server, Family::V4, &renamed).err(), Some(UNAUTHORIZED));
}

/// A TURN REST credential: username `<expiry>:<user id>`, credential base64(HMAC-SHA1(secret,
/// username)).
fn mint(secret: &str, expiry: u64, user: &str) -> (String, String) {
    let username = format!("{expiry}:{user}");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, credential)
}

fn expiry_in(seconds: i64) -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    now.checked_add_signed(seconds).unwrap()
}

fn config_map_conf(objects: &[Value]) -> String {
    let map = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "orb-turn")
        .expect("the relay's ConfigMap");
    map["data"]["turnserver.conf"].as_str().unwrap().to_owned()
}

fn relay_ports(conf: &str) -> (u16, u16) {
    let value = |key: &str| -> u16 {
        conf.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {conf}"))
            .parse()
            .unwrap()
    };
    (value("min-port="), value("max-port="))
}

/// The message counts of `turnutils_uclient`'s summary line.
fn relayed_counts(output: &str) -> (u64, u64) {
    let count = |key: &str| -> u64 {
        output
            .rsplit(key)
            .next()
            .filter(|rest| rest.len() < output.len())
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (count("tot_send_msgs="), count("tot_recv_msgs="))
}

struct Tools {
    turnserver: PathBuf,
    uclient: PathBuf,
    peer: PathBuf,
    ip: PathBuf,
}

/// coturn's server, test client and echo peer, and `ip`; `None` (skipped, or failed in CI) when
/// one is missing.
fn coturn_tools() -> Option<Tools> {
    let find = |name: &str| -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    };
    let tools = (|| {
        Some(Tools {
            turnserver: find("turnserver")?,
            uclient: find("turnutils_uclient")?,
            peer: find("turnutils_peer")?,
            ip: find("ip")?,
        })
    })();
    if tools.is_none() {
        skip_unless_ci(
            "the real-coturn test",
            "coturn (turnserver, turnutils_uclient, turnutils_peer) or iproute2 is not installed: \
             run scripts/install-deps.sh",
        );
    }
    tools
}

fn ip(tools: &Tools, args: &[&str]) {
    support::run(Command::new(&tools.ip).args(args));
}

/// A directory under the target directory for the relay's files, removed unless the test failed.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let dir = support::target_dir().join(format!("turn-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch { dir }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Prints coturn's log when the test fails.
struct LogOnFailure(PathBuf);

impl Drop for LogOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            eprintln!("coturn's log ({}):\n{log}", self.0.display());
        }
    }
}

fn wait_for_binding(server: SocketAddr) {
    let client = Stun::new(server);
    let deadline = Instant::now() + HANG_GUARD;
    while client
        .transaction(BINDING, &[], None, Duration::from_millis(200))
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "coturn never answered a STUN binding at {server}"
        );
    }
}

fn wait_for_echo(peer: SocketAddr) {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let deadline = Instant::now() + HANG_GUARD;
    let mut buffer = [0; 64];
    loop {
        socket.send_to(b"ping", peer).unwrap();
        match socket.recv_from(&mut buffer) {
            Ok((_, from)) if from == peer => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline, "coturn's echo peer never answered at {peer}");
    }
}

// STUN and TURN (RFC 8489, RFC 8656): the few messages and attributes this test speaks.
const MAGIC_COOKIE: u32 = 0x2112_A442;
const BINDING: u16 = 0x0001;
const ALLOCATE: u16 = 0x0003;
const CREATE_PERMISSION: u16 = 0x0008;
const SUCCESS: u16 = 0x0100;
const ERROR: u16 = 0x0110;
const USERNAME: u16 = 0x0006;
const MESSAGE_INTEGRITY: u16 = 0x0008;
const ERROR_CODE: u16 = 0x0009;
const XOR_PEER_ADDRESS: u16 = 0x0012;
const REALM: u16 = 0x0014;
const NONCE: u16 = 0x0015;
const XOR_RELAYED_ADDRESS: u16 = 0x0016;
const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
const REQUESTED_TRANSPORT: u16 = 0x0019;
const UDP: u8 = 17;

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

/// A decoded answer: its class (success or error), error code and attributes.
struct Answer {
    class: u16,
    attributes: Vec<(u16, Vec<u8>)>,
    transaction: [u8; 12],
}

impl Answer {
    fn attribute(&self, kind: u16) -> Option<&[u8]> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_slice())
    }

    fn error_code(&self) -> Option<u16> {
        let v = self.attribute(ERROR_CODE)?;
        Some(u16::from(v[2] & 0x07) * 100 + u16::from(v[3]))
    }

    fn xor_address(&self, kind: u16) -> Option<SocketAddr> {
        let v = self.attribute(kind)?;
        let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
        let ip: IpAddr = match v[1] {
            1 => Ipv4Addr::from(u32::from_be_bytes(v[4..8].try_into().unwrap()) ^ MAGIC_COOKIE).into(),
            _ => {
                let mut bytes: [u8; 16] = v[4..20].try_into().unwrap();
                for (b, k) in bytes.iter_mut().zip(xor_key(&self.transaction)) {
                    *b ^= k;
                }
                Ipv6Addr::from(bytes).into()
            }
        };
        Some(SocketAddr::new(ip, port))
    }
}

/// The bytes an IPv6 XOR address is masked with: the magic cookie, then the transaction id.
fn xor_key(transaction: &[u8; 12]) -> Vec<u8> {
    MAGIC_COOKIE.to_be_bytes().iter().chain(transaction).copied().collect()
}

fn xor_peer_address(peer: IpAddr, transaction: &[u8; 12]) -> Vec<u8> {
    let port = PEER_PORT ^ (MAGIC_COOKIE >> 16) as u16;
    let mut v = vec![0];
    match peer {
        IpAddr::V4(a) => {
            v.push(1);
            v.extend(port.to_be_bytes());
            v.extend((u32::from(a) ^ MAGIC_COOKIE).to_be_bytes());
        }
        IpAddr::V6(a) => {
            v.push(2);
            v.extend(port.to_be_bytes());
            v.extend(a.octets().iter().zip(xor_key(transaction)).map(|(b, k)| b ^ k));
        }
    }
    v
}

/// One client transport address (a UDP socket) talking to the server.
struct Stun {
    socket: UdpSocket,
    server: SocketAddr,
}

impl Stun {
    fn new(server: SocketAddr) -> Self {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        Stun { socket, server }
    }

    /// Sends a request until its answer arrives; `None` when none came within `wait` per attempt
    /// after a few attempts.
    fn transaction(
        &self,
        kind: u16,
        attributes: &[(u16, Vec<u8>)],
        key: Option<&[u8]>,
        wait: Duration,
    ) -> Option<Answer> {
        let transaction = new_transaction_id();
        let request = encode(kind, &transaction, attributes, key);
        self.exchange(&request, &transaction, wait)
    }

    fn exchange(&self, request: &[u8], transaction: &[u8; 12], wait: Duration) -> Option<Answer> {
        self.socket.set_read_timeout(Some(wait)).unwrap();
        let mut buffer = [0; 2048];
        for _ in 0..5 {
            self.socket.send_to(request, self.server).unwrap();
            loop {
                match self.socket.recv_from(&mut buffer) {
                    Ok((n, _)) => match decode(&buffer[..n]) {
                        Some(answer) if &answer.transaction == transaction => return Some(answer),
                        _ => continue,
                    },
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::ConnectionRefused
                        ) =>
                    {
                        break;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
        None
    }

    /// A request that must be answered (the server is known to be up).
    fn request(&self, kind: u16, attributes: &[(u16, Vec<u8>)], key: Option<&[u8]>) -> Answer {
        let transaction = new_transaction_id();
        self.request_with(kind, &transaction, attributes, key)
    }

    fn request_with(
        &self,
        kind: u16,
        transaction: &[u8; 12],
        attributes: &[(u16, Vec<u8>)],
        key: Option<&[u8]>,
    ) -> Answer {
        let request = encode(kind, transaction, attributes, key);
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            if let Some(answer) = self.exchange(&request, transaction, Duration::from_millis(500)) {
                return answer;
            }
            assert!(
                Instant::now() < deadline,
                "no answer from {} to {kind:#06x}",
                self.server
            );
        }
    }
}

/// An allocation made with long-term credentials, and what later requests on it carry.
struct Allocation {
    stun: Stun,
    relayed: SocketAddr,
    authentication: Vec<(u16, Vec<u8>)>,
    key: Vec<u8>,
}

impl Allocation {
    /// Allocates a UDP relay: the first request is answered 401 with the realm and a nonce; the
    /// second, with the credential, is answered with the relayed address or an error code.
    fn new(server: SocketAddr, family: Family, (username, credential): &(String, String)) -> Result<Self, u16> {
        let stun = Stun::new(server);
        let mut wanted = vec![(REQUESTED_TRANSPORT, vec![UDP, 0, 0, 0])];
        if let Family::V6 = family {
            wanted.push((REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0]));
        }
        let challenge = stun.request(ALLOCATE, &wanted, None);
        assert_eq!(challenge.error_code(), Some(401), "an unauthenticated allocation");
        let realm = challenge.attribute(REALM).expect("a realm").to_vec();
        let nonce = challenge.attribute(NONCE).expect("a nonce").to_vec();
        let key = long_term_key(username, &realm, credential);
        let authentication = vec![(USERNAME, username.as_bytes().to_vec()), (REALM, realm), (NONCE, nonce)];
        let answer = stun.request(ALLOCATE, &[wanted, authentication.clone()].concat(), Some(&key));
        if answer.class != SUCCESS {
            return Err(answer.error_code().expect("an error code"));
        }
        let relayed = answer.xor_address(XOR_RELAYED_ADDRESS).expect("a relayed address");
        Ok(Allocation {
            stun,
            relayed,
            authentication,
            key,
        })
    }

    /// CreatePermission for `peer`: `Ok`, or the error code.
    fn permit(&self, peer: IpAddr) -> Result<(), u16> {
        let transaction = new_transaction_id();
        let attributes = [
            vec![(XOR_PEER_ADDRESS, xor_peer_address(peer, &transaction))],
            self.authentication.clone(),
        ]
        .concat();
        let answer = self
            .stun
            .request_with(CREATE_PERMISSION, &transaction, &attributes, Some(&self.key));
        match answer.class {
            SUCCESS => Ok(()),
            _ => Err(answer.error_code().expect("an error code")),
        }
    }
}

/// The long-term credential key: MD5(username ":" realm ":" password).
fn long_term_key(username: &str, realm: &[u8], password: &str) -> Vec<u8> {
    use md5::{Digest, Md5};
    let mut hash = Md5::new();
    hash.update(username.as_bytes());
    hash.update(b":");
    hash.update(realm);
    hash.update(b":");
    hash.update(password.as_bytes());
    hash.finalize().to_vec()
}

fn new_transaction_id() -> [u8; 12] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let mut id = [0; 12];
    id[..4].copy_from_slice(&std::process::id().to_be_bytes());
    id[4..].copy_from_slice(&NEXT.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    id
}

/// A request; with a key, MESSAGE-INTEGRITY (HMAC-SHA1 over the message up to it, its length
/// field already counting it) ends it.
fn encode(kind: u16, transaction: &[u8; 12], attributes: &[(u16, Vec<u8>)], key: Option<&[u8]>) -> Vec<u8> {
    let mut body = Vec::new();
    for (attribute, value) in attributes {
        body.extend(attribute.to_be_bytes());
        body.extend((value.len() as u16).to_be_bytes());
        body.extend(value);
        body.resize(body.len().next_multiple_of(4), 0);
    }
    let integrity_length = if key.is_some() { 24 } else { 0 };
    let mut message = Vec::new();
    message.extend(kind.to_be_bytes());
    message.extend(((body.len() + integrity_length) as u16).to_be_bytes());
    message.extend(MAGIC_COOKIE.to_be_bytes());
    message.extend(transaction);
    message.extend(body);
    if let Some(key) = key {
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).unwrap();
        mac.update(&message);
        message.extend(MESSAGE_INTEGRITY.to_be_bytes());
        message.extend(20u16.to_be_bytes());
        message.extend(mac.finalize().into_bytes());
    }
    message
}

fn decode(bytes: &[u8]) -> Option<Answer> {
    if bytes.len() < 20 || u32::from_be_bytes(bytes[4..8].try_into().unwrap()) != MAGIC_COOKIE {
        return None;
    }
    let kind = u16::from_be_bytes([bytes[0], bytes[1]]);
    let length = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
    let body = bytes.get(20..20 + length)?;
    let mut attributes = Vec::new();
    let mut rest = body;
    while rest.len() >= 4 {
        let attribute = u16::from_be_bytes([rest[0], rest[1]]);
        let size = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        attributes.push((attribute, rest.get(4..4 + size)?.to_vec()));
        rest = rest.get((4 + size).next_multiple_of(4)..).unwrap_or_default();
    }
    Some(Answer {
        class: kind & (SUCCESS | ERROR),
        attributes,
        transaction: bytes[8..20].try_into().unwrap(),
    })
}
