//! `veltrix`: the command line, also usable as a library so a program that registers custom
//! handlers ([`veltrix_engine::handler::Plugins`]) gets the whole CLI — `run`, `validate`,
//! `test`, `dlq`, ... — with its handlers available:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     let plugins = veltrix_engine::handler::Plugins::new(); // .processor(..) / .sink(..)
//!     veltrix::main_with(plugins)
//! }
//! ```

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

use std::path::Path;
use std::process::ExitCode;
use std::sync::OnceLock;

use veltrix_core::config::{self, Diagnostic, Loaded};
pub use veltrix_engine::handler::Plugins;

/// The custom handler types of this program, set once by [`main_with`].
static PLUGINS: OnceLock<Plugins> = OnceLock::new();

/// The `veltrix` command line with only the built-in handler types.
pub fn main() -> ExitCode {
    main_with(Plugins::new())
}

/// The `veltrix` command line with `plugins`' handler types available in configs.
pub fn main_with(plugins: Plugins) -> ExitCode {
    // Test builds (feature `failpoints`) arm the failpoints named in `FAILPOINTS`.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let _ = PLUGINS.set(plugins);
    cli::main()
}

pub(crate) fn plugins() -> Plugins {
    PLUGINS.get().cloned().unwrap_or_default()
}

/// Loads a config file knowing this program's custom handler types.
pub(crate) fn load_config(path: &Path) -> Result<Loaded, Vec<Diagnostic>> {
    config::load_with(path, cli::cores(), &plugins().extensions())
}
