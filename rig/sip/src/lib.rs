//! sip service (being built).
