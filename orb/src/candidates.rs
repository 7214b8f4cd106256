//! The remote ICE candidate deny list: a human's candidates (trickled, or inside the offer's SDP)
//! naming an address in a denied range never reach the WebRTC stack, so a hostile peer cannot make
//! the orb send connectivity checks to loopback, the cloud metadata address or the cluster's own
//! pods and services.
//!
//! A candidate's connection address is the fifth field of
//! `candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> …`.
//! Hostname addresses (browsers hide host candidates behind mDNS `….local` names) cannot be
//! checked before they are resolved, and an orb in a pod cannot resolve mDNS names anyway: while
//! any range is denied they are dropped. With an empty deny list (local development) every
//! well-formed candidate passes.

use std::net::IpAddr;

use orb_api::cidr::CidrList;
use rtc::sdp::description::common::Attribute;
use rtc::sdp::description::session::SessionDescription;
use serde_json::Value;

/// Why a remote candidate was dropped; the `reason` label of `orb_ice_candidates_dropped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The address is in a denied range.
    DeniedAddress,
    /// The address is a hostname (an mDNS `.local` name, say) while ranges are denied.
    Hostname,
    /// Not a candidate line.
    Malformed,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [DropReason::DeniedAddress, DropReason::Hostname, DropReason::Malformed];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::DeniedAddress => "denied_address",
            DropReason::Hostname => "hostname",
            DropReason::Malformed => "malformed",
        }
    }
}

/// What to do with one remote candidate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to the WebRTC stack.
    Accept,
    /// "No more candidates": harmless, handed on as before.
    EndOfCandidates,
    Drop {
        reason: DropReason,
        detail: String,
    },
}

/// The connection address of a candidate line: `Some(Ok(ip))`, `Some(Err(hostname))`, or `None`
/// when the line is not a candidate.
fn address(line: &str) -> Option<Result<IpAddr, &str>> {
    let trimmed = line.trim();
    let trimmed = trimmed.strip_prefix("a=").unwrap_or(trimmed);
    let rest = trimmed.strip_prefix("candidate:")?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // foundation component transport priority address port "typ" type
    if fields.len() < 8 || fields[6] != "typ" || fields[5].parse::<u16>().is_err() {
        return None;
    }
    let addr = fields[4];
    // The address checked must be the one the WebRTC stack will use: its own parser reads the line
    // as `addIceCandidate` hands it over (only a leading `candidate:` removed; fields split on any
    // Unicode whitespace). A line the two read differently (say, with U+3000 between fields) is
    // not passed on; one the stack cannot read at all it refuses itself.
    let as_the_stack_sees = line.strip_prefix("candidate:").unwrap_or(line);
    if let Ok(c) = rtc::ice::candidate::unmarshal_candidate(as_the_stack_sees)
        && c.address() != addr
    {
        return None;
    }
    // A zone index (`fe80::1%eth0`) does not change which range the address is in.
    let bare = addr.split_once('%').map_or(addr, |(a, _)| a);
    let bare = bare.strip_prefix('[').and_then(|a| a.strip_suffix(']')).unwrap_or(bare);
    Some(match bare.parse::<IpAddr>() {
        Ok(ip) => Ok(ip),
        Err(_) if is_hostname(addr) => Err(addr),
        Err(_) => return None,
    })
}

/// RFC 1123 host name characters (mDNS names are UUIDs under `.local`).
fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// Judges one candidate line (`candidate:…` or `a=candidate:…`).
pub fn check_line(line: &str, denied: &CidrList) -> Verdict {
    match address(line) {
        None => Verdict::Drop {
            reason: DropReason::Malformed,
            detail: "not an ICE candidate line".into(),
        },
        Some(Ok(ip)) => match denied.find(ip) {
            Some(range) => Verdict::Drop {
                reason: DropReason::DeniedAddress,
                detail: format!("{ip} is in the denied range {range}"),
            },
            None => Verdict::Accept,
        },
        Some(Err(host)) if !denied.is_empty() => Verdict::Drop {
            reason: DropReason::Hostname,
            detail: format!("{host:?} is a hostname, which cannot be checked against the denied ranges"),
        },
        Some(Err(_)) => Verdict::Accept,
    }
}

/// Judges one trickled candidate as signaling relays it: an `RTCIceCandidateInit` object, a bare
/// candidate string, or null / empty for the end of candidates.
pub fn check(candidate: &Value, denied: &CidrList) -> Verdict {
    if crate::media::is_end_of_candidates(candidate) {
        return Verdict::EndOfCandidates;
    }
    let line = match candidate {
        Value::String(s) => Some(s.as_str()),
        Value::Object(o) => o.get("candidate").and_then(Value::as_str),
        _ => None,
    };
    match line {
        Some(line) => check_line(line, denied),
        None => Verdict::Drop {
            reason: DropReason::Malformed,
            detail: "the candidate is neither a string nor an object with a candidate string".into(),
        },
    }
}

/// The offer's SDP without the `a=candidate` lines the deny list refuses (a non-trickle offer
/// carries its candidates inline), and why each removed line was removed. A candidate line this
/// check cannot read is removed too: whatever the stack would make of it, it is not checked.
pub fn filter_sdp(sdp: &str, denied: &CidrList) -> (String, Vec<(DropReason, String)>) {
    if denied.is_empty() {
        return (sdp.to_owned(), Vec::new());
    }
    let mut dropped = Vec::new();
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        // A line may hide behind leading white space or control characters (`\r`) the stack's
        // lexer skips.
        let content = line
            .trim_end_matches(['\r', '\n'])
            .trim_start_matches(|c: char| c.is_whitespace() || c.is_control());
        if content.starts_with("a=candidate:")
            && let Verdict::Drop { reason, detail } = check_line(content, denied)
        {
            dropped.push((reason, detail));
            continue;
        }
        out.push_str(line);
    }
    // Then what the stack will read: the candidates its own SDP parser finds in what is left,
    // checked again; any this line filter missed are taken out of the parsed description.
    if let Ok(mut parsed) = SessionDescription::unmarshal(&mut std::io::Cursor::new(out.as_bytes())) {
        let mut missed = Vec::new();
        let mut keep = |attributes: &mut Vec<Attribute>| {
            attributes.retain(|a| {
                if !a.is_ice_candidate() {
                    return true;
                }
                let line = format!("candidate:{}", a.value.as_deref().unwrap_or_default());
                match check_line(&line, denied) {
                    Verdict::Drop { reason, detail } => {
                        missed.push((reason, detail));
                        false
                    }
                    _ => true,
                }
            })
        };
        keep(&mut parsed.attributes);
        for media in &mut parsed.media_descriptions {
            keep(&mut media.attributes);
        }
        if !missed.is_empty() {
            dropped.extend(missed);
            out = parsed.marshal();
        }
    }
    (out, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn cluster() -> CidrList {
        format!(
            "{},10.96.0.0/12,10.244.0.0/16",
            orb_api::cidr::DEFAULT_DENIED_CANDIDATE_CIDRS
        )
        .parse()
        .unwrap()
    }

    fn cand(addr: &str) -> String {
        format!("candidate:842163049 1 udp 1677729535 {addr} 46154 typ srflx raddr 0.0.0.0 rport 0 generation 0")
    }

    fn reason(v: Verdict) -> Option<DropReason> {
        match v {
            Verdict::Drop { reason, .. } => Some(reason),
            _ => None,
        }
    }

    #[test]
    fn denied_addresses_are_dropped_and_public_ones_pass() {
        let denied = cluster();
        for hostile in [
            "127.0.0.1",
            "169.254.169.254",
            "10.96.0.1",
            "10.244.3.7",
            "::1",
            "fe80::1",
            "fe80::1%eth0",
            "::ffff:169.254.169.254",
            "::ffff:10.96.0.1",
            "0.0.0.0",
            "::",
        ] {
            assert_eq!(
                reason(check_line(&cand(hostile), &denied)),
                Some(DropReason::DeniedAddress),
                "{hostile}"
            );
        }
        for public in ["203.0.113.7", "2001:db8::7", "::ffff:203.0.113.7", "192.0.2.1"] {
            assert_eq!(check_line(&cand(public), &denied), Verdict::Accept, "{public}");
        }
        let Verdict::Drop { detail, .. } = check_line(&cand("169.254.169.254"), &denied) else {
            panic!()
        };
        assert_eq!(detail, "169.254.169.254 is in the denied range 169.254.0.0/16");
    }

    #[test]
    fn the_sdp_attribute_form_and_tcp_candidates_are_checked_too() {
        let denied = cluster();
        assert_eq!(
            reason(check_line(&format!("a={}", cand("10.96.0.10")), &denied)),
            Some(DropReason::DeniedAddress)
        );
        let tcp = "candidate:1 1 tcp 1518280447 169.254.169.254 9 typ host tcptype active";
        assert_eq!(reason(check_line(tcp, &denied)), Some(DropReason::DeniedAddress));
    }

    #[test]
    fn hostnames_are_dropped_only_while_ranges_are_denied() {
        let mdns = cand("2f1e7c3a-5d9b-4c1e-9b0a-8e8f0d3c2b1a.local");
        assert_eq!(reason(check_line(&mdns, &cluster())), Some(DropReason::Hostname));
        assert_eq!(check_line(&mdns, &CidrList::default()), Verdict::Accept);
        assert_eq!(check_line(&cand("127.0.0.1"), &CidrList::default()), Verdict::Accept);
    }

    #[test]
    fn malformed_candidates_are_dropped_with_a_reason() {
        for bad in [
            "",
            "nonsense",
            "candidate:",
            "candidate:1 1 udp 1 10.0.0.1",
            "candidate:1 1 udp 1 10.0.0.1 70000 typ host",
            "candidate:1 1 udp 1 10.0.0.1 5 kind host",
            "candidate:1 1 udp 1 10.0.0.1/8 5 typ host",
            "candidate:1 1 udp 1 a..b 5 typ host",
        ] {
            assert_eq!(
                reason(check_line(bad, &CidrList::default())),
                Some(DropReason::Malformed),
                "{bad:?}"
            );
        }
        for bad in [json!(5), json!({"candidate": 5}), json!([cand("203.0.113.7")])] {
            assert_eq!(reason(check(&bad, &cluster())), Some(DropReason::Malformed), "{bad}");
        }
    }

    #[test]
    fn trickle_forms_are_understood() {
        let denied = cluster();
        assert_eq!(check(&Value::Null, &denied), Verdict::EndOfCandidates);
        assert_eq!(check(&json!({"candidate": ""}), &denied), Verdict::EndOfCandidates);
        assert_eq!(check(&json!(cand("203.0.113.7")), &denied), Verdict::Accept);
        assert_eq!(
            reason(check(&json!({"candidate": cand("127.0.0.1"), "sdpMid": "0"}), &denied)),
            Some(DropReason::DeniedAddress)
        );
    }

    /// Hostile users, round two, item 2: a filter that split fields on ASCII white space only saw a
    /// public address where the stack (any Unicode white space) read the metadata address; an SDP
    /// line behind a `\r` skipped the filter but reached the stack.
    #[test]
    fn lines_the_stack_reads_differently_never_pass() {
        let denied = cluster();
        // ASCII fields: … 203.0.113.7 5 typ host; the stack's: … 169.254.169.254 80 typ host.
        let ideographic =
            "candidate:1 1 udp 2\u{3000}169.254.169.254\u{3000}80\u{3000}typ\u{3000}host 203.0.113.7 5 typ host";
        assert_eq!(reason(check_line(ideographic, &denied)), Some(DropReason::Malformed));
        assert_eq!(
            reason(check(&json!({"candidate": ideographic}), &denied)),
            Some(DropReason::Malformed)
        );
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n\ra={}\r\na={}\r\na=mid:0\r\n",
            cand("169.254.169.254"),
            cand("203.0.113.7"),
        );
        let (kept, dropped) = filter_sdp(&sdp, &denied);
        assert_eq!(dropped.len(), 1, "{dropped:?}");
        assert!(
            !kept.contains("169.254.169.254") && kept.contains("203.0.113.7"),
            "{kept}"
        );
        // Whatever the stack's own parser finds in what is kept passes the check.
        let parsed = SessionDescription::unmarshal(&mut std::io::Cursor::new(kept.as_bytes())).unwrap();
        for a in parsed.media_descriptions.iter().flat_map(|m| &m.attributes) {
            if a.is_ice_candidate() {
                let line = format!("candidate:{}", a.value.as_deref().unwrap());
                assert_eq!(check_line(&line, &denied), Verdict::Accept, "{line}");
            }
        }
    }

    #[test]
    fn inline_candidates_of_an_offer_are_filtered() {
        let sdp = format!(
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na={}\r\na={}\r\na={}\r\na=mid:0\r\n",
            cand("169.254.169.254"),
            cand("203.0.113.7"),
            cand("x.local")
        );
        let (kept, dropped) = filter_sdp(&sdp, &cluster());
        assert_eq!(
            kept,
            format!(
                "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na={}\r\na=mid:0\r\n",
                cand("203.0.113.7")
            )
        );
        let reasons: Vec<DropReason> = dropped.iter().map(|(r, _)| *r).collect();
        assert_eq!(reasons, [DropReason::DeniedAddress, DropReason::Hostname]);
        assert_eq!(filter_sdp(&sdp, &CidrList::default()).0, sdp);
    }

    proptest! {
        /// Any text, as a string or inside an object: a verdict, never a panic; and an accepted
        /// line's address is never in a denied range.
        #[test]
        fn arbitrary_candidates_never_panic_and_never_pass_a_denied_address(
            s in "(a=)?(candidate:)?[ -~]{0,80}",
            octets: [u8; 4],
            port: u16,
        ) {
            let denied = cluster();
            let _ = check(&json!(s), &denied);
            let _ = check(&json!({"candidate": s}), &denied);
            let _ = filter_sdp(&s, &denied);
            let ip = std::net::Ipv4Addr::from(octets);
            let line = format!("candidate:1 1 udp 2122260223 {ip} {port} typ host");
            let verdict = check_line(&line, &denied);
            prop_assert_eq!(verdict == Verdict::Accept, !denied.contains(IpAddr::V4(ip)));
            let mapped = format!("candidate:1 1 udp 2122260223 {} {port} typ host", ip.to_ipv6_mapped());
            prop_assert_eq!(check_line(&mapped, &denied) == Verdict::Accept, !denied.contains(IpAddr::V4(ip)));
        }
    }
}
