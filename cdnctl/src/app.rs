//! Runs a parsed command line against the member it names.

use crate::cli::{Cli, Command};
use crate::client::{Admin, Error};

/// Runs `cli`'s subcommand; the error says what failed and carries the exit code.
pub async fn run(cli: Cli) -> Result<(), Error> {
    let admin = Admin::new(cli.token, cli.timeout, cli.connect_timeout);
    let addr = cli.admin.as_str();
    match cli.command {
        Command::Purge(a) => crate::ops::purge(&admin, addr, a).await,
        Command::Push(a) => crate::ops::push(&admin, addr, a).await,
        Command::Prewarm(a) => crate::ops::prewarm(&admin, addr, a).await,
        Command::Status(a) => crate::status::status(&admin, addr, a).await,
        Command::Top(a) => crate::top::top(&admin, addr, a).await,
    }
}
