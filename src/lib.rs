//! orch: an autonomous software-delivery pipeline of AI coding agents, run by
//! short-lived processes around one SQLite database.
//!
//! The binary (`src/main.rs`) is a thin shell over this library; the library
//! is split the way the system is: [`storage`] (the database), [`queue`] (the
//! job queue), [`liveness`] (owner locks), [`pipeline`] (stages and tasks),
//! [`gates`] (the quality gates that read agents' artifacts), [`runner`]
//! (running agents in guarded process groups), [`webhooks`] (the inbox of
//! webhook deliveries), and [`cmd`] (one module per subcommand).

pub mod backends;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod context;
pub mod crash;
pub mod error;
pub mod gates;
pub mod git;
pub mod git_config_guard;
pub mod git_locks;
pub mod html;
pub mod http1;
pub mod liveness;
pub mod manual;
pub mod names;
pub mod outbox;
pub mod output;
pub mod pipeline;
pub mod private_state;
pub mod queue;
pub mod runner;
pub mod secrets;
pub mod storage;
pub mod web;
pub mod webhooks;
pub mod workspace;
