//! orb-operator: runs AiOrbs as GPU pods and enforces their limits through reconciliation.

pub mod config;
pub mod pod;
pub mod policy;
