//! dhcp service (being built).
