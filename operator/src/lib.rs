//! orb-operator
