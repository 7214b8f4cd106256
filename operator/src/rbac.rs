//! Every Kubernetes API call the operator makes, as RBAC rules: the single list the Helm chart's
//! roles are tested against (granting less breaks the operator, granting more breaks least
//! privilege).

/// Where a permission is needed: cluster-wide (or the watched namespace), or only in the
/// operator's own namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Watched,
    OwnNamespace,
}

/// `(scope, apiGroup, resource, verbs)`.
pub const API_CALLS: &[(Scope, &str, &str, &[&str])] = &[
    // The controller's watch and reconcile: finalizer patches, TTL deletion; the admitter's list.
    (
        Scope::Watched,
        "hybridcoach.io",
        "aiorbs",
        &["get", "list", "watch", "patch", "delete"],
    ),
    // Status by server-side apply.
    (Scope::Watched, "hybridcoach.io", "aiorbs/status", &["get", "patch"]),
    // The owned-pod watch, the pod read, create and delete; the warm pool's list, and the claim
    // that binds a warm pod to an orb (a resourceVersion-guarded patch).
    (
        Scope::Watched,
        "",
        "pods",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    // The per-orb token Secret: read first (never written over one the orb does not control),
    // created when absent, applied over the orb's own; a warm pod's credential Secret (create).
    (Scope::Watched, "", "secrets", &["get", "create", "patch"]),
    // Transition events.
    (Scope::Watched, "events.k8s.io", "events", &["create", "patch"]),
    // The admission ledger.
    (Scope::OwnNamespace, "", "configmaps", &["get", "create", "update"]),
    // Leader election.
    (
        Scope::OwnNamespace,
        "coordination.k8s.io",
        "leases",
        &["get", "create", "patch"],
    ),
];
