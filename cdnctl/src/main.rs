//! `cdnctl`: the operator's command line (see the library's documentation).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Usage errors exit 2 here, with clap's message.
    let cli = cdnctl::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cdnctl: starting the runtime: {e}");
            return ExitCode::from(cdnctl::exit::OTHER);
        }
    };
    match runtime.block_on(cdnctl::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cdnctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
