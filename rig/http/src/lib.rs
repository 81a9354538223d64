//! http service (being built).
