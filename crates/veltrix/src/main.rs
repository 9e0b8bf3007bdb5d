//! `veltrix`: the command line (the library's `main`, with the built-in handler types only).

use std::process::ExitCode;

fn main() -> ExitCode {
    veltrix::main()
}
