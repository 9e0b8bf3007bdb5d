//! `veltrix config default|reference`: the built-in default config (commented TOML) and the
//! Markdown reference of every key (`docs/configuration.md`), both from `veltrix-core`.

use veltrix_core::config;

use crate::cli::exit;

/// Prints the built-in default config, as `veltrix run` without `-c` uses it.
pub(crate) fn default() -> u8 {
    print!("{}", config::DEFAULT_CONFIG_TOML);
    exit::OK
}

/// Prints the configuration reference (Markdown), generated from the schema.
pub(crate) fn reference() -> u8 {
    print!("{}", config::reference_markdown());
    exit::OK
}
