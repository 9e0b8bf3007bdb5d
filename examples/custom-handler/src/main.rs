//! The whole `veltrix` command line (`run`, `validate`, `test`, `dlq`, ...) with two more
//! handler types: the `redact` processor and the `spool` sink.

fn main() -> std::process::ExitCode {
    veltrix::main_with(veltrix_example_custom_handler::plugins())
}
