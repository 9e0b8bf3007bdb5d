//! The treasure-hunt backend: the whole `veltrix` command line plus the `score` processor.

fn main() -> std::process::ExitCode {
    veltrix::main_with(treasure_hunt::plugins())
}
