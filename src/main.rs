//! The `swapd` binary: parse the command line, run, and choose the exit code. Everything
//! else lives in the library so tests and benches use the same code.

use std::process::ExitCode;

use swapd::daemon::{self, Action};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let action = match daemon::parse_args(&args) {
        Ok(action) => action,
        Err(message) => {
            eprintln!("swapd: {message}");
            return ExitCode::from(2);
        }
    };
    match action {
        Action::Help => {
            print!("{}", daemon::USAGE);
            ExitCode::SUCCESS
        }
        Action::Version => {
            println!("swapd version {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Action::CheckConfig(sources) => match swapd::config::load_sources(&sources) {
            Ok(loaded) => {
                for warning in &loaded.warnings {
                    eprintln!("warning: {warning}");
                }
                print!("{}", loaded.config.summary());
                println!("{}: OK", sources.describe());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
        // A daemon that could not start says why (`RunError`'s text) and exits with 1.
        Action::Run(options) => match daemon::run(options) {
            Ok(()) => {
                // Log lines still waiting for the stdout batcher go out before the exit.
                log::logger().flush();
                ExitCode::SUCCESS
            }
            Err(error) => {
                log::logger().flush();
                eprintln!("swapd: {error}");
                ExitCode::FAILURE
            }
        },
    }
}
