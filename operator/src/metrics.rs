//! Prometheus metrics of the operator, named like controller-runtime's. No orb, room or user ids
//! as labels: the label sets are bounded by phases, reasons, results and nodes.

use std::time::Duration;

use orb_api::{OrbPhase, TerminationReason};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StartLabels {
    /// `cold` (a new pod), `warm` (bound to a warm pool pod) or `prewarmed` (`spec.startAt`).
    pub start: &'static str,
}

/// How an orb's pod came to be, for the time-to-ready histogram.
pub const STARTS: [&str; 3] = ["cold", "warm", "prewarmed"];
/// Results of binding an admitted orb to the warm pool.
pub const ASSIGNMENT_RESULTS: [&str; 3] = ["bound", "failed", "empty"];

pub struct Metrics {
    pub registry: Registry,
    pub reconcile_total: Family<ResultLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub orbs: Family<PhaseLabels, Gauge>,
    pub node_orbs: Family<NodeLabels, Gauge>,
    pub queue_length: Gauge,
    pub namespace_queue_length: Family<NamespaceLabels, Gauge>,
    pub capacity_used: Gauge,
    pub capacity_limit: Gauge,
    pub admission_wait: Histogram,
    pub time_to_ready: Family<StartLabels, Histogram>,
    pub warm_available: Gauge,
    pub warm_pods: Gauge,
    pub warm_target: Gauge,
    pub assignments: Family<ResultLabels, Counter>,
    pub terminations: Family<ReasonLabels, Counter>,
    pub restarts: Counter,
    pub admission_passes: Family<ResultLabels, Counter>,
    pub leader: Gauge,
}

/// Buckets for waits measured in seconds to hours (queueing, pod start-up).
fn wait_buckets() -> impl Iterator<Item = f64> {
    [
        0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    ]
    .into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("orb_operator");
        let m = Metrics {
            reconcile_total: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            orbs: Family::default(),
            node_orbs: Family::default(),
            queue_length: Gauge::default(),
            namespace_queue_length: Family::default(),
            capacity_used: Gauge::default(),
            capacity_limit: Gauge::default(),
            admission_wait: Histogram::new(wait_buckets()),
            time_to_ready: Family::new_with_constructor(|| {
                // Warm starts take well under a second: finer buckets at the low end.
                Histogram::new([0.05, 0.1, 0.25].into_iter().chain(wait_buckets()))
            }),
            warm_available: Gauge::default(),
            warm_pods: Gauge::default(),
            warm_target: Gauge::default(),
            assignments: Family::default(),
            terminations: Family::default(),
            restarts: Counter::default(),
            admission_passes: Family::default(),
            leader: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "reconcile",
            "Reconciliations of AiOrbs by result",
            m.reconcile_total.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciliations by error kind",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconciliation took",
            m.reconcile_duration.clone(),
        );
        registry.register("orbs", "AiOrbs by phase, as of the last admission pass", m.orbs.clone());
        registry.register("node_orbs", "Admitted, unfinished orbs per node", m.node_orbs.clone());
        registry.register("queue_length", "AiOrbs waiting for capacity", m.queue_length.clone());
        registry.register(
            "namespace_queue_length",
            "AiOrbs waiting for capacity, per namespace (only namespaces with a queue)",
            m.namespace_queue_length.clone(),
        );
        registry.register(
            "capacity_used",
            "Admitted, unfinished orbs holding capacity",
            m.capacity_used.clone(),
        );
        registry.register(
            "capacity_limit",
            "The concurrency cap (--max-concurrent-orbs)",
            m.capacity_limit.clone(),
        );
        registry.register(
            "admission_wait_seconds",
            "Time from creation to admission",
            m.admission_wait.clone(),
        );
        registry.register(
            "time_to_ready_seconds",
            "Time from creation to the orb's first Ready, by how its pod started",
            m.time_to_ready.clone(),
        );
        registry.register(
            "warm_orbs_available",
            "Warm pool pods ready to be bound",
            m.warm_available.clone(),
        );
        registry.register(
            "warm_orbs",
            "Warm pool pods, ready or not (GPU holders besides the cap)",
            m.warm_pods.clone(),
        );
        registry.register(
            "warm_orbs_target",
            "The warm pool's size now: --warm-orbs, less what the cap cannot admit",
            m.warm_target.clone(),
        );
        registry.register(
            "warm_assignments",
            "Admitted orbs offered the warm pool, by result: bound, failed (started cold), empty (no ready pod)",
            m.assignments.clone(),
        );
        registry.register(
            "terminations",
            "Orbs that ended, by termination reason",
            m.terminations.clone(),
        );
        registry.register("restarts", "Failed orb pods replaced", m.restarts.clone());
        registry.register(
            "admission_passes",
            "Admission passes by result",
            m.admission_passes.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            m.leader.clone(),
        );
        // Pre-create the series dashboards and alerts expect, so they exist before the first event.
        for phase in OrbPhase::ALL {
            let _ = m.orbs.get_or_create(&PhaseLabels { phase: phase.as_str() });
        }
        for reason in TerminationReason::ALL {
            let _ = m.terminations.get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            });
        }
        for result in ["success", "error"] {
            let _ = m.reconcile_total.get_or_create(&ResultLabels { result });
            let _ = m.admission_passes.get_or_create(&ResultLabels { result });
        }
        let _ = m.admission_passes.get_or_create(&ResultLabels { result: "conflict" });
        for start in STARTS {
            let _ = m.time_to_ready.get_or_create(&StartLabels { start });
        }
        for result in ASSIGNMENT_RESULTS {
            let _ = m.assignments.get_or_create(&ResultLabels { result });
        }
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn reconciled(&self, elapsed: Duration, error: Option<&'static str>) {
        self.reconcile_duration.observe(elapsed.as_secs_f64());
        let result = if error.is_some() { "error" } else { "success" };
        self.reconcile_total.get_or_create(&ResultLabels { result }).inc();
        if let Some(error) = error {
            self.reconcile_errors.get_or_create(&ErrorLabels { error }).inc();
        }
    }

    pub fn terminated(&self, reason: TerminationReason) {
        self.terminations
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        orb_telemetry::encode_metrics(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_controller_runtime_style_names() {
        let m = Metrics::default();
        m.reconciled(Duration::from_millis(3), Some("kube"));
        let text = m.encode();
        for name in [
            "orb_operator_reconcile_total{result=\"error\"} 1",
            "orb_operator_reconcile_errors_total{error=\"kube\"} 1",
            "orb_operator_reconcile_duration_seconds_bucket",
            "orb_operator_orbs{phase=\"Queued\"} 0",
            "orb_operator_terminations_total{reason=\"IdleTimeout\"} 0",
            "orb_operator_admission_wait_seconds_bucket",
            "orb_operator_time_to_ready_seconds_bucket{le=\"0.05\",start=\"warm\"}",
            "orb_operator_warm_orbs_available 0",
            "orb_operator_warm_assignments_total{result=\"failed\"} 0",
            "orb_operator_queue_length 0",
            "orb_operator_capacity_limit 0",
            "orb_operator_restarts_total 0",
            "orb_operator_leader 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
