//! The SQLite backend: every concept's interface implemented for a
//! `rusqlite::Connection` (a transaction derefs to one), with its SQL kept
//! here, one module per concept. Concepts move here one by one
//! (docs/scaling.md, "The storage boundary").

mod counters;
mod deliveries;
mod leases;
mod ledger;
mod outbox;
mod views;
