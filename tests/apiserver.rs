//! The real-API-server tier: the operator, signaling's Kubernetes runtime and the chart against a
//! real `kube-apiserver` and `etcd` ([`envtest`]), where field ownership, preconditions, watches,
//! RBAC, admission policies and the garbage collector behave as in a cluster. Skipped with a
//! message where `KUBEBUILDER_ASSETS` is not set; required in CI.

mod envtest;
mod support;

#[path = "apiserver/cap.rs"]
mod cap;
#[path = "apiserver/chart.rs"]
mod chart;
#[path = "apiserver/kubelet.rs"]
mod kubelet;
#[path = "apiserver/lifecycle.rs"]
mod lifecycle;
#[path = "apiserver/operator.rs"]
mod operator;
#[path = "apiserver/pool.rs"]
mod pool;
#[path = "apiserver/scale.rs"]
mod scale;
#[path = "apiserver/summaries.rs"]
mod summaries;
