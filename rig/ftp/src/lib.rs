//! ftp service (being built).
