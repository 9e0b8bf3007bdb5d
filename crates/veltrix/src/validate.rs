//! `veltrix validate FILE…`.

use std::path::PathBuf;

use veltrix_core::config;

use crate::cli::{cores, exit};

/// Prints every diagnostic of every file; 78 if any file has an error.
pub(crate) fn validate(files: &[PathBuf]) -> u8 {
    let mut code = exit::OK;
    for file in files {
        match config::load(file, cores()) {
            Ok(loaded) => {
                for warning in &loaded.warnings {
                    eprintln!("{warning}");
                }
                let c = &loaded.config;
                println!(
                    "{}: valid ({} queue(s), {} pipeline(s), {} sink(s), {} warning(s))",
                    file.display(),
                    c.queues.len(),
                    c.pipelines.len(),
                    c.sinks.len(),
                    loaded.warnings.len()
                );
            }
            Err(diagnostics) => {
                for d in &diagnostics {
                    eprintln!("{d}");
                }
                let errors = diagnostics.iter().filter(|d| d.is_error()).count();
                eprintln!("{}: invalid ({errors} error(s))", file.display());
                code = exit::CONFIG;
            }
        }
    }
    code
}
