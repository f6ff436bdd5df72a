//! The stage pipeline: stages, their agents, and the task records that move
//! through them.

pub mod stage;
pub mod task;

pub use stage::Stage;
pub mod advance;
pub mod attention;
pub mod brief;
pub mod budget;
pub mod cancel;
pub mod confine;
pub mod engine;
pub mod evaluate;
pub mod gate_check;
pub mod gauges;
pub mod judge;
pub mod lease;
pub mod merge_gate;
pub mod overview;
pub mod owners;
pub mod post_deploy;
pub mod reconcile;
pub mod run_log;
pub mod run_stats;
pub mod run_summary;
pub mod runs;
pub mod self_deploy;
pub mod worker;
