//! Subcommands whose arguments clap builds only when they are used.
//!
//! The derive builds every subcommand's arguments up front and copies the
//! global options into each; for short-lived processes that was a fifth of
//! the work of an `orch claim`. Wrapping a variant's payload in [`Lazy`]
//! hands the same definitions to clap's `Command::defer` instead.

use clap::{ArgMatches, Args, FromArgMatches, Subcommand};

/// A subcommand's arguments, defined only when that subcommand runs or its
/// help is shown ([`clap::Command::defer`]).
///
/// Every `orch` process parses its command line, and most live for a few
/// milliseconds. Building every subcommand's arguments up front (and
/// copying the global options into each) was a fifth of the work of an
/// `orch claim`; deferred, a process builds the one subcommand it runs.
#[derive(Debug, Clone)]
pub struct Lazy<T>(pub T);

impl<T> std::ops::Deref for Lazy<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: FromArgMatches> FromArgMatches for Lazy<T> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches(matches).map(Lazy)
    }

    fn from_arg_matches_mut(matches: &mut ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches_mut(matches).map(Lazy)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(matches)
    }

    fn update_from_arg_matches_mut(&mut self, matches: &mut ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches_mut(matches)
    }
}

impl<T: Args> Args for Lazy<T> {
    fn group_id() -> Option<clap::Id> {
        T::group_id()
    }

    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.defer(|cmd| keep_about(cmd, T::augment_args))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        cmd.defer(|cmd| keep_about(cmd, T::augment_args_for_update))
    }
}

/// `augment(cmd)`, keeping the description the subcommand's variant gave
/// `cmd`: the doc comment of an `Args` struct or a subcommand enum would
/// otherwise replace it, as the deferred part runs last.
fn keep_about(cmd: clap::Command, augment: fn(clap::Command) -> clap::Command) -> clap::Command {
    use clap::builder::Resettable;
    let reset_or = |s: Option<&clap::builder::StyledStr>| {
        s.cloned().map_or(Resettable::Reset, Resettable::Value)
    };
    let about = reset_or(cmd.get_about());
    let long_about = reset_or(cmd.get_long_about());
    augment(cmd).about(about).long_about(long_about)
}

impl<T: Subcommand> Subcommand for Lazy<T> {
    fn augment_subcommands(cmd: clap::Command) -> clap::Command {
        cmd.defer(|cmd| keep_about(cmd, T::augment_subcommands))
    }

    fn augment_subcommands_for_update(cmd: clap::Command) -> clap::Command {
        cmd.defer(|cmd| keep_about(cmd, T::augment_subcommands_for_update))
    }

    fn has_subcommand(name: &str) -> bool {
        T::has_subcommand(name)
    }
}
