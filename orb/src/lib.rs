//! The orb.
