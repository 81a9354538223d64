//! tftp service (being built).
