//! Connection caps, checked before the WebSocket upgrade: open connections in total, per client
//! address, per token user (a room token's room and user id, from any number of addresses), and
//! rooms with open connections on this replica. An admitted connection holds an
//! [`Admitted`] guard until its task ends, whichever way it ends (a close, a dropped TCP
//! connection, a failed upgrade): dropping the guard gives its slots back, so the counts are
//! exact.
//!
//! The client address is the TCP peer's, unless a trusted proxy header is configured: then it is
//! the right-most entry of that header, the one the proxy in front of signaling appended (entries
//! to its left were written by the client or by proxies nobody vouches for). A request without a
//! readable entry counts as the peer (the proxy itself). IPv6 clients are counted by their /64,
//! the block one subscriber usually holds, so that a client cannot multiply its share by
//! rotating addresses inside it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, HeaderName};

/// The caps (`--max-connections`, `--max-connections-per-client`, `--max-rooms`) and where the
/// client address comes from (`--trusted-proxy-header`).
#[derive(Clone, Debug)]
pub struct AdmissionLimits {
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    /// Per room and user id of a room token (`--max-connections-per-token`).
    pub max_connections_per_token: usize,
    pub max_rooms: usize,
    pub trusted_proxy_header: Option<HeaderName>,
}

/// Why a connection was refused before the upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections` reached (HTTP 503).
    Connections,
    /// `--max-connections-per-client` reached for this client address (HTTP 429).
    ClientConnections,
    /// `--max-connections-per-token` reached for this token's room and user (HTTP 429).
    TokenConnections,
    /// `--max-rooms` reached and the connection is for another room (HTTP 503).
    Rooms,
}

impl Refusal {
    pub const ALL: [Refusal; 4] = [
        Refusal::Connections,
        Refusal::ClientConnections,
        Refusal::TokenConnections,
        Refusal::Rooms,
    ];

    /// The metric label (`connections_refused_total{reason}`).
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Connections => "max_connections",
            Refusal::ClientConnections => "max_connections_per_client",
            Refusal::TokenConnections => "max_connections_per_token",
            Refusal::Rooms => "max_rooms",
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            Refusal::Connections => "the server has as many connections as it accepts; try again later",
            Refusal::ClientConnections => "too many connections from this address; close some or try again later",
            Refusal::TokenConnections => {
                "too many connections with this token's user in this room; close some or try again later"
            }
            Refusal::Rooms => "the server has as many rooms as it accepts; try again later",
        }
    }
}

/// Open connections, by client and by room.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    clients: HashMap<IpAddr, usize>,
    /// By room and user id of the token.
    users: HashMap<(String, String), usize>,
    rooms: HashMap<String, usize>,
}

/// What is admitted right now (for tests and diagnostics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdmissionCounts {
    pub connections: usize,
    pub clients: usize,
    pub rooms: usize,
}

#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    counts: Mutex<Counts>,
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            counts: Mutex::new(Counts::default()),
        })
    }

    pub fn limits(&self) -> &AdmissionLimits {
        &self.limits
    }

    /// Takes a slot for a connection from `client` to `room`, as the token's `user` (none with
    /// auth off), or says which cap refuses it.
    pub fn admit(self: &Arc<Self>, client: IpAddr, room: &str, user: Option<&str>) -> Result<Admitted, Refusal> {
        let client = client_key(client);
        let user = user.map(|user| (room.to_owned(), user.to_owned()));
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= self.limits.max_connections {
            return Err(Refusal::Connections);
        }
        if counts.clients.get(&client).copied().unwrap_or(0) >= self.limits.max_connections_per_client {
            return Err(Refusal::ClientConnections);
        }
        if let Some(user) = &user
            && counts.users.get(user).copied().unwrap_or(0) >= self.limits.max_connections_per_token
        {
            return Err(Refusal::TokenConnections);
        }
        if !counts.rooms.contains_key(room) && counts.rooms.len() >= self.limits.max_rooms {
            return Err(Refusal::Rooms);
        }
        counts.total += 1;
        *counts.clients.entry(client).or_default() += 1;
        *counts.rooms.entry(room.to_owned()).or_default() += 1;
        if let Some(user) = &user {
            *counts.users.entry(user.clone()).or_default() += 1;
        }
        Ok(Admitted {
            admission: Arc::clone(self),
            client,
            room: room.to_owned(),
            user,
        })
    }

    pub fn counts(&self) -> AdmissionCounts {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        AdmissionCounts {
            connections: counts.total,
            clients: counts.clients.len(),
            rooms: counts.rooms.len(),
        }
    }

    fn release(&self, admitted: &Admitted) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total = counts.total.saturating_sub(1);
        decrement(&mut counts.clients, &admitted.client);
        decrement(&mut counts.rooms, admitted.room.as_str());
        if let Some(user) = &admitted.user {
            decrement(&mut counts.users, user);
        }
    }

    /// The address a connection counts against: see the module documentation.
    pub fn client_address(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        self.limits
            .trusted_proxy_header
            .as_ref()
            .and_then(|name| forwarded_client(headers, name))
            .unwrap_or(peer.ip())
    }
}

fn decrement<K, Q>(map: &mut HashMap<K, usize>, key: &Q)
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// One admitted connection's slots; dropping it gives them back.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    client: IpAddr,
    room: String,
    user: Option<(String, String)>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.release(self);
    }
}

/// The right-most entry of every `name` header line (lines are joined in order, as one
/// comma-separated list): an IP address, optionally with a port (`1.2.3.4:5678`, `[::1]:5678`).
/// `None` when there is no such header or that entry is not an address.
pub fn forwarded_client(headers: &HeaderMap, name: &HeaderName) -> Option<IpAddr> {
    let last = headers.get_all(name).iter().next_back()?;
    let entry = last.as_bytes().rsplit(|&b| b == b',').next()?;
    let entry = std::str::from_utf8(entry).ok()?.trim();
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|a| a.ip()))
        .ok()
}

/// The key a client counts under: IPv4 (also when written as IPv4-mapped IPv6) as it is, IPv6 by
/// its /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_connections: usize, per_client: usize, rooms: usize) -> Arc<Admission> {
        Admission::new(AdmissionLimits {
            max_connections,
            max_connections_per_client: per_client,
            max_connections_per_token: usize::MAX,
            max_rooms: rooms,
            trusted_proxy_header: None,
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_cap_refuses_and_drops_give_slots_back() {
        let a = admission(4, 2, 2);
        let x1 = a.admit(ip("10.0.0.1"), "r1", None).unwrap();
        let x2 = a.admit(ip("10.0.0.1"), "r1", None).unwrap();
        assert_eq!(
            a.admit(ip("10.0.0.1"), "r1", None).unwrap_err(),
            Refusal::ClientConnections
        );
        let y = a.admit(ip("10.0.0.2"), "r2", None).unwrap();
        assert_eq!(a.admit(ip("10.0.0.3"), "r3", None).unwrap_err(), Refusal::Rooms);
        let z = a.admit(ip("10.0.0.3"), "r2", None).unwrap();
        assert_eq!(a.admit(ip("10.0.0.4"), "r2", None).unwrap_err(), Refusal::Connections);
        assert_eq!(
            a.counts(),
            AdmissionCounts {
                connections: 4,
                clients: 3,
                rooms: 2
            }
        );
        drop((x1, y, z));
        assert_eq!(
            a.counts(),
            AdmissionCounts {
                connections: 1,
                clients: 1,
                rooms: 1
            }
        );
        let r3 = a.admit(ip("10.0.0.3"), "r3", None).unwrap();
        drop((x2, r3));
        assert_eq!(a.counts(), AdmissionCounts::default());
    }

    #[test]
    fn a_token_user_counts_across_addresses_and_rooms_apart() {
        let a = Admission::new(AdmissionLimits {
            max_connections_per_token: 2,
            ..admission(100, 100, 100).limits().clone()
        });
        let one = a.admit(ip("10.0.0.1"), "r", Some("u")).unwrap();
        let _two = a.admit(ip("10.0.0.2"), "r", Some("u")).unwrap();
        assert_eq!(
            a.admit(ip("10.0.0.3"), "r", Some("u")).unwrap_err(),
            Refusal::TokenConnections
        );
        let _other_user = a.admit(ip("10.0.0.3"), "r", Some("v")).unwrap();
        let _other_room = a.admit(ip("10.0.0.3"), "s", Some("u")).unwrap();
        let _no_token = a.admit(ip("10.0.0.3"), "r", None).unwrap();
        drop(one);
        let _three = a.admit(ip("10.0.0.3"), "r", Some("u")).unwrap();
    }

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let a = admission(100, 1, 100);
        let _one = a.admit(ip("2001:db8:1:2::1"), "r", None).unwrap();
        assert_eq!(
            a.admit(ip("2001:db8:1:2:ffff::9"), "r", None).unwrap_err(),
            Refusal::ClientConnections
        );
        let _other = a.admit(ip("2001:db8:1:3::1"), "r", None).unwrap();
        let _v4 = a.admit(ip("192.0.2.1"), "r", None).unwrap();
        assert_eq!(
            a.admit(ip("::ffff:192.0.2.1"), "r", None).unwrap_err(),
            Refusal::ClientConnections
        );
    }

    #[test]
    fn the_right_most_forwarded_entry_is_the_client() {
        let name = HeaderName::from_static("x-forwarded-for");
        let mut h = HeaderMap::new();
        assert_eq!(forwarded_client(&h, &name), None);
        h.append(&name, "203.0.113.9, 198.51.100.7".parse().unwrap());
        assert_eq!(forwarded_client(&h, &name), Some(ip("198.51.100.7")));
        h.append(&name, " 192.0.2.5:4321".parse().unwrap());
        assert_eq!(forwarded_client(&h, &name), Some(ip("192.0.2.5")));
        h.append(&name, "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(forwarded_client(&h, &name), Some(ip("2001:db8::1")));
        h.append(&name, "1.2.3.4, unknown".parse().unwrap());
        assert_eq!(forwarded_client(&h, &name), None, "not an address: the peer counts");

        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let a = admission(1, 1, 1);
        assert_eq!(a.client_address(peer, &h), ip("127.0.0.1"), "no header configured");
        let trusted = Admission::new(AdmissionLimits {
            trusted_proxy_header: Some(name.clone()),
            ..a.limits().clone()
        });
        assert_eq!(trusted.client_address(peer, &h), ip("127.0.0.1"), "unreadable entry");
        let mut h = HeaderMap::new();
        h.insert(&name, "10.1.1.1".parse().unwrap());
        assert_eq!(trusted.client_address(peer, &h), ip("10.1.1.1"));
    }
}
