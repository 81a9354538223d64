//! phonerig's orchestrator: the lab and scenario model, the bench that
//! starts services and binds drivers, the runner, and the `rig` CLI.

pub mod bench;
pub mod cli;
pub mod control;
pub mod diag;
pub mod doctor;
pub mod expect;
pub mod lab;
pub mod mutants;
pub mod netns_runtime;
pub mod registry;
pub mod run;
pub mod runner;
pub mod scenario;
pub mod storm;
