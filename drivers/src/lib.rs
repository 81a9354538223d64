//! drivers (being built).
