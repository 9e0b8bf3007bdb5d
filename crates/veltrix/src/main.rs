//! `veltrix`: the command line. `main` only maps the outcome to an exit code; the commands live
//! in their own modules.

mod bench;
mod cli;
mod config_cmd;
mod dlq;
mod queue;
mod run;
mod send;
mod telemetry;
mod test_cmd;
mod top;
mod validate;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
