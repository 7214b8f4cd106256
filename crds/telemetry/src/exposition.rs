//! Content negotiation for `/metrics`, shared by every binary. prometheus-client writes
//! OpenMetrics, which Prometheus asks for; other consumers (`curl | promtool check metrics`, older
//! scrapers) expect the Prometheus text format 0.0.4, where a counter's family is named with its
//! `_total` suffix. This turns the one into the other instead of maintaining two encoders.

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_0_0_4: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Picks the format from the request's `Accept` header: OpenMetrics when asked for, else text.
pub fn negotiate(accept: Option<&str>, openmetrics: String) -> (&'static str, String) {
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        (OPENMETRICS, openmetrics)
    } else {
        (TEXT_0_0_4, to_text_format(&openmetrics))
    }
}

/// Rewrites OpenMetrics text as Prometheus text format 0.0.4.
pub fn to_text_format(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + counters.len() * 16);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        if let Some((kind, rest)) = meta {
            let name = rest.split(' ').next().unwrap_or_default();
            if counters.contains(&name) {
                out.push_str(kind);
                out.push_str(name);
                out.push_str("_total");
                out.push_str(&rest[name.len()..]);
                out.push('\n');
                continue;
            }
        } else if counters
            .iter()
            .any(|c| line.strip_prefix(c).is_some_and(|r| r.starts_with("_created")))
        {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OM: &str = "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total{a=\"b\"} 3\nx_requests_created 1.0\n# HELP x_up Up.\n# TYPE x_up gauge\n# UNIT x_up seconds\nx_up 1\n# EOF\n";

    #[test]
    fn counters_get_their_total_family_name_in_text_format() {
        assert_eq!(
            to_text_format(OM),
            "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\nx_requests_total{a=\"b\"} 3\n# HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n"
        );
    }

    #[test]
    fn prometheus_gets_openmetrics_and_everyone_else_text() {
        let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
        assert_eq!(negotiate(Some(accept), OM.into()).0, OPENMETRICS);
        assert_eq!(negotiate(None, OM.into()).0, TEXT_0_0_4);
        assert_eq!(negotiate(Some("*/*"), OM.into()).0, TEXT_0_0_4);
    }
}
