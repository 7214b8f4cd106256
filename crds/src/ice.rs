//! The orb's ICE transport policy: which candidate pairs it may carry media over. The operator
//! hands it to every orb pod in [`ICE_TRANSPORT_POLICY_ENV`]; the chart sets it from
//! `orb.iceTransportPolicy`.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// The orb's setting, in its pods' env.
pub const ICE_TRANSPORT_POLICY_ENV: &str = "ORB_ICE_TRANSPORT_POLICY";

/// WebRTC's `iceTransportPolicy`, in its own spelling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum IceTransportPolicy {
    /// Any candidate pair: direct, through a NAT's mapping, or through a relay.
    #[default]
    All,
    /// Relayed candidates only: the orb gathers no host or server-reflexive candidates, so its
    /// own address is never revealed and it sends media to the TURN relay only.
    Relay,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{0:?} is not an ICE transport policy: `all` or `relay`")]
pub struct UnknownIceTransportPolicy(pub String);

impl FromStr for IceTransportPolicy {
    type Err = UnknownIceTransportPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(Self::All),
            "relay" => Ok(Self::Relay),
            other => Err(UnknownIceTransportPolicy(other.to_owned())),
        }
    }
}

impl fmt::Display for IceTransportPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::All => "all",
            Self::Relay => "relay",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_reads_back_what_it_writes_and_refuses_other_words() {
        for policy in [IceTransportPolicy::All, IceTransportPolicy::Relay] {
            assert_eq!(policy.to_string().parse(), Ok(policy));
        }
        assert_eq!(IceTransportPolicy::default(), IceTransportPolicy::All);
        for bad in ["", "Relay", "none", "relay "] {
            assert_eq!(
                bad.parse::<IceTransportPolicy>(),
                Err(UnknownIceTransportPolicy(bad.to_owned()))
            );
        }
    }
}
