//! phonerig orchestrator.
