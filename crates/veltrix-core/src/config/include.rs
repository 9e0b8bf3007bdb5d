//! `include = ["tests/*.toml"]`: config unit tests kept in files of their own. Paths are relative
//! to the including config's directory; only the last path component may hold wildcards (`*`
//! any run, `?` one character). An included file may hold only `[[tests]]`; its diagnostics name
//! its own file, line and column.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::DeTable;

use super::diagnostic::Source;
use super::lints::codes;
use super::{ConfigTest, Decoder, Diagnostic, Severity, TypePattern, get, interpolate};

/// Files matching `pattern` relative to `base`, sorted; an error message when there are none.
fn expand(base: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    let path = Path::new(pattern);
    let (dir, name) = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(dir), Some(name)) => (base.join(dir), name),
        _ => return Err(format!("`{pattern}` does not name a file")),
    };
    if dir.to_string_lossy().contains(['*', '?']) {
        return Err(format!(
            "`{pattern}`: only the file name may hold wildcards"
        ));
    }
    let matcher = TypePattern::new(name).map_err(|e| format!("`{pattern}`: {e}"))?;
    let entries = std::fs::read_dir(&dir)
        .map_err(|e| format!("`{pattern}`: cannot read {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| e.file_name().to_str().is_some_and(|n| matcher.matches(n)))
        .map(|e| e.path())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("`{pattern}` matches no file in {}", dir.display()));
    }
    Ok(files)
}

/// The `[[tests]]` of one included file, or its diagnostics.
fn tests_of(
    path: &Path,
    pipelines: &[&str],
    cores: usize,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Vec<ConfigTest>, Vec<Diagnostic>) {
    let file = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            let d = super::diagnostic::diagnostic_at(
                &file,
                "",
                0..0,
                Severity::Error,
                format!("cannot read the included file: {e}"),
                None,
            )
            .with_code(codes::UNREADABLE);
            return (Vec::new(), vec![d]);
        }
    };
    let expanded = match interpolate::interpolate(&text, env) {
        Ok(expanded) => expanded,
        Err(errors) => {
            let diagnostics = errors
                .into_iter()
                .map(|e| {
                    super::diagnostic::diagnostic_at(
                        &file,
                        &text,
                        e.span,
                        Severity::Error,
                        e.message,
                        e.hint,
                    )
                    .with_code(codes::INTERPOLATION)
                })
                .collect();
            return (Vec::new(), diagnostics);
        }
    };
    let source = Source {
        file: &file,
        original: &text,
        expanded,
    };
    let root = match DeTable::parse(&source.expanded.text) {
        Ok(root) => root,
        Err(e) => {
            let d = source
                .diagnostic(
                    Severity::Error,
                    e.span().unwrap_or(0..0),
                    format!("invalid TOML: {}", e.message().trim_end()),
                    None,
                )
                .with_code(codes::TOML_SYNTAX);
            return (Vec::new(), vec![d]);
        }
    };
    let no_extensions = super::Extensions::default();
    let mut decoder = Decoder {
        source: &source,
        cores,
        extensions: &no_extensions,
        diagnostics: Vec::new(),
    };
    decoder.check_keys(root.get_ref(), "an included tests file", &["tests"]);
    let tests = decoder.tests(root.get_ref(), pipelines);
    (tests, decoder.diagnostics)
}

impl Decoder<'_> {
    /// Adds the tests of every file `include` names to `tests`.
    pub(super) fn include(
        &mut self,
        root: &DeTable<'_>,
        pipelines: &[&str],
        tests: &mut Vec<ConfigTest>,
        env: &dyn Fn(&str) -> Option<String>,
    ) {
        let Some(value) = get(root, "include") else {
            return;
        };
        let Some(patterns) = self.strings(value, "include", false) else {
            return;
        };
        let base = Path::new(self.source.file)
            .parent()
            .unwrap_or(Path::new(""))
            .to_path_buf();
        for (pattern, span) in patterns {
            match expand(&base, &pattern) {
                Err(message) => self.error_coded(
                    codes::INVALID_VALUE,
                    span,
                    message,
                    Some(
                        "paths are relative to this config's directory, e.g. \"tests/*.toml\""
                            .to_owned(),
                    ),
                ),
                Ok(files) => {
                    for file in files {
                        let (found, diagnostics) = tests_of(&file, pipelines, self.cores, env);
                        self.diagnostics.extend(diagnostics);
                        for test in found {
                            self.add_included(tests, test, span.clone(), &file);
                        }
                    }
                }
            }
        }
    }

    fn add_included(
        &mut self,
        tests: &mut Vec<ConfigTest>,
        test: ConfigTest,
        span: Range<usize>,
        file: &Path,
    ) {
        if tests.iter().any(|t| t.name == test.name) {
            self.error_coded(
                codes::CONFLICT,
                span,
                format!(
                    "two tests are named `{}` (one in {})",
                    test.name,
                    file.display()
                ),
                Some("give every test its own name".to_owned()),
            );
        } else {
            tests.push(test);
        }
    }
}
