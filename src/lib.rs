//! orch: an autonomous software-delivery pipeline of AI coding agents, run by
//! short-lived processes around one SQLite database.
//!
//! The binary (`src/main.rs`) is a thin shell over this library; the library
//! is split the way the system is: [`storage`] (the database), [`queue`] (the
//! job queue), [`liveness`] (owner locks), [`pipeline`] (stages and tasks),
//! [`runner`] (running agents in guarded process groups), and [`cmd`] (one
//! module per subcommand).

pub mod cli;
pub mod cmd;
pub mod config;
pub mod context;
pub mod crash;
pub mod error;
pub mod liveness;
pub mod names;
pub mod output;
pub mod pipeline;
pub mod queue;
pub mod runner;
pub mod storage;
