//! `twinctl`: parse the command line, run the command, exit with its code. Every bad input
//! is one line on stderr.

#![forbid(unsafe_code)]

use clap::error::ErrorKind;
use twin_control_plane::cli::{self, Cli};
use twin_control_plane::error::{EXIT_ERROR, EXIT_OK, EXIT_USAGE};

fn main() {
    let cli = match Cli::try_parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            std::process::exit(EXIT_OK);
        }
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            std::process::exit(EXIT_USAGE);
        }
        Err(e) => {
            eprintln!("error: {}", cli::one_line(&e));
            std::process::exit(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            std::process::exit(EXIT_ERROR);
        }
    };
    let code = match runtime.block_on(cli::run(cli)) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
