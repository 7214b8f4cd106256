//! Address ranges (`10.0.0.0/8`, `fe80::/10`) and comma-separated lists of them: the ICE candidate
//! deny list the orb enforces and the operator hands to every orb pod.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use thiserror::Error;

/// The ranges an orb never sends media to unless told otherwise: loopback, link-local (the cloud
/// metadata address 169.254.169.254 included), "this network" and the unspecified addresses. The
/// operator adds the cluster's pod and service ranges.
pub const DEFAULT_DENIED_CANDIDATE_CIDRS: &str = "127.0.0.0/8,::1/128,169.254.0.0/16,fe80::/10,0.0.0.0/8,::/128";

/// One address range: an address and how many of its leading bits are fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("{0:?} is not an address range like 10.0.0.0/8 or fe80::/10")]
    Syntax(String),
    #[error("{0:?}: the prefix length is longer than the address")]
    Prefix(String),
    #[error("{0:?} has bits set past its prefix length (the range starts at {1})")]
    HostBits(String, Cidr),
}

impl Cidr {
    /// The first address of the range.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in the range. IPv4 ranges match IPv4 addresses only, IPv6 ranges IPv6
    /// addresses only; see [`CidrList::contains`] for IPv4-mapped IPv6 addresses.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `addr/prefix`, or a bare address (a range of one). Bits set past the prefix are refused
    /// (`10.0.0.1/8` is most likely a typo for something else).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| CidrError::Syntax(s.to_owned()))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.len() <= 3 => {
                p.parse::<u8>().map_err(|_| CidrError::Prefix(s.to_owned()))?
            }
            Some(_) => return Err(CidrError::Syntax(s.to_owned())),
        };
        if prefix > max {
            return Err(CidrError::Prefix(s.to_owned()));
        }
        let cidr = Cidr { network, prefix };
        let start = cidr.first();
        if start != network {
            return Err(CidrError::HostBits(s.to_owned(), Cidr { network: start, prefix }));
        }
        Ok(cidr)
    }
}

impl Cidr {
    fn first(&self) -> IpAddr {
        match self.network {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// A comma-separated list of ranges. The empty string (or only commas and spaces) is the empty
/// list, which contains nothing: `ORB_DENIED_CANDIDATE_CIDRS=` turns the orb's deny list off.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CidrList(Vec<Cidr>);

impl CidrList {
    pub fn new(ranges: Vec<Cidr>) -> Self {
        Self(ranges)
    }

    /// [`DEFAULT_DENIED_CANDIDATE_CIDRS`].
    pub fn default_denied() -> Self {
        DEFAULT_DENIED_CANDIDATE_CIDRS.parse().expect("the default list parses")
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn ranges(&self) -> &[Cidr] {
        &self.0
    }

    /// The first range holding `ip`. An IPv4-mapped IPv6 address (`::ffff:169.254.169.254`) is
    /// the IPv4 address it maps, and is also checked as itself.
    pub fn find(&self, ip: IpAddr) -> Option<&Cidr> {
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.0
            .iter()
            .find(|c| c.contains(ip) || mapped.is_some_and(|m| c.contains(m)))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.find(ip).is_some()
    }
}

impl FromStr for CidrList {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }
}

impl fmt::Display for CidrList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_parse_and_match() {
        let c: Cidr = "10.96.0.0/12".parse().unwrap();
        assert!(c.contains(ip("10.96.0.1")) && c.contains(ip("10.111.255.255")));
        assert!(!c.contains(ip("10.112.0.0")) && !c.contains(ip("::ffff:10.96.0.1")));
        let c: Cidr = "fe80::/10".parse().unwrap();
        assert!(c.contains(ip("fe80::1")) && c.contains(ip("febf::1")) && !c.contains(ip("fec0::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("::1")));
        let one: Cidr = "169.254.169.254".parse().unwrap();
        assert_eq!(one.prefix(), 32);
        assert!(one.contains(ip("169.254.169.254")) && !one.contains(ip("169.254.169.253")));
        assert_eq!("::/0".parse::<Cidr>().unwrap().to_string(), "::/0");
    }

    #[test]
    fn bad_ranges_are_refused() {
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10/8",
            "10.0.0.0/+8",
            "x/8",
            "10.0.0.0/8/8",
            "/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "10.0.0.1/8".parse::<Cidr>().unwrap_err().to_string(),
            "\"10.0.0.1/8\" has bits set past its prefix length (the range starts at 10.0.0.0/8)"
        );
    }

    #[test]
    fn an_empty_list_is_empty_and_contains_nothing() {
        for empty in ["", " ", ",", " , ,"] {
            let list: CidrList = empty.parse().unwrap();
            assert!(list.is_empty(), "{empty:?}");
            assert!(!list.contains(ip("127.0.0.1")));
        }
        assert!("10.0.0.0/8,nonsense".parse::<CidrList>().is_err());
    }

    #[test]
    fn the_default_deny_list_covers_loopback_link_local_and_unspecified() {
        let list = CidrList::default_denied();
        for denied in [
            "127.0.0.1",
            "127.255.0.9",
            "::1",
            "169.254.169.254",
            "fe80::abcd",
            "0.0.0.0",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(list.contains(ip(denied)), "{denied}");
        }
        for allowed in [
            "203.0.113.7",
            "10.0.0.1",
            "2001:db8::1",
            "::ffff:203.0.113.7",
            "192.168.1.2",
        ] {
            assert!(!list.contains(ip(allowed)), "{allowed}");
        }
        assert_eq!(list.to_string(), DEFAULT_DENIED_CANDIDATE_CIDRS);
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in ".{0,60}") {
            let _ = s.parse::<CidrList>();
        }

        #[test]
        fn a_v4_range_matches_exactly_the_addresses_sharing_its_prefix(a: u32, b: u32, prefix in 0u8..=32) {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            let net = std::net::Ipv4Addr::from(a & mask);
            let c: Cidr = format!("{net}/{prefix}").parse().unwrap();
            let other = IpAddr::V4(b.into());
            prop_assert_eq!(c.contains(other), b & mask == a & mask);
            // The same address, IPv4-mapped, is in a list holding the range.
            let mapped = IpAddr::V6(std::net::Ipv4Addr::from(b).to_ipv6_mapped());
            prop_assert_eq!(CidrList::new(vec![c]).contains(mapped), b & mask == a & mask);
        }

        #[test]
        fn a_list_prints_back_to_itself(parts in proptest::collection::vec((any::<u128>(), 0u8..=128), 0..5)) {
            let ranges: Vec<Cidr> = parts
                .into_iter()
                .map(|(a, p)| {
                    let mask = u128::MAX.checked_shl(128 - u32::from(p)).unwrap_or(0);
                    Cidr { network: IpAddr::V6((a & mask).into()), prefix: p }
                })
                .collect();
            let list = CidrList::new(ranges);
            prop_assert_eq!(list.to_string().parse::<CidrList>().unwrap(), list);
        }
    }
}
