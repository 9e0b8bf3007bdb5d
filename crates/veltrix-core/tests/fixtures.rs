//! Loads every config under `tests/fixtures/` from disk and checks it reports exactly the
//! diagnostics its `# expect-error:` / `# expect-warning:` header lines list (see the README
//! there), at the stated line and column.

use std::path::Path;

use veltrix_core::config::{self, Diagnostic, Severity};

/// The number of cores the fixtures' warnings are written for.
const CORES: usize = 2;

#[derive(Debug)]
struct Expected {
    severity: Severity,
    /// The stable code, when the line gives one (`# expect-error[V004]: ...`).
    code: Option<String>,
    line: usize,
    col: usize,
    fragment: String,
}

fn expectations(text: &str) -> Vec<Expected> {
    text.lines()
        .filter_map(|line| {
            let (severity, rest) = if let Some(rest) = line.strip_prefix("# expect-error") {
                (Severity::Error, rest)
            } else {
                (Severity::Warning, line.strip_prefix("# expect-warning")?)
            };
            let (code, rest) = match rest.strip_prefix('[') {
                Some(coded) => {
                    let (code, rest) = coded.split_once(']').expect("`[CODE]`");
                    (Some(code.to_owned()), rest)
                }
                None => (None, rest),
            };
            let rest = rest.strip_prefix(": ").expect("`: ` after the severity");
            let mut parts = rest.splitn(3, ':');
            let mut number = || parts.next().and_then(|p| p.trim().parse().ok());
            let (Some(line), Some(col)) = (number(), number()) else {
                panic!("malformed expectation {rest:?}");
            };
            let fragment = parts.next().expect("a message fragment").trim().to_owned();
            Some(Expected {
                severity,
                code,
                line,
                col,
                fragment,
            })
        })
        .collect()
}

fn check(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let expected = expectations(&text);
    let diagnostics: Vec<Diagnostic> = match config::load(path, CORES) {
        Ok(loaded) => loaded.warnings,
        Err(diagnostics) => diagnostics,
    };
    let rendered: String = diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(
        diagnostics.len(),
        expected.len(),
        "{}: expected {expected:?}, got:\n{rendered}",
        path.display()
    );
    for (d, e) in diagnostics.iter().zip(&expected) {
        let ok = d.severity == e.severity
            && (d.line, d.col) == (e.line, e.col)
            && d.message.contains(&e.fragment)
            && e.code.as_deref().is_none_or(|c| d.code == Some(c));
        assert!(ok, "{}: expected {e:?}, got:\n{d}", path.display());
        assert_eq!(d.file, path.display().to_string());
        assert!(!d.snippet.is_empty(), "{d}");
    }
}

#[test]
fn every_fixture_reports_exactly_its_expected_diagnostics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            check(&path);
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "only {checked} fixtures found in {}",
        dir.display()
    );
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let errors = config::load(Path::new("/nonexistent/veltrix.toml"), CORES).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].file, "/nonexistent/veltrix.toml");
    assert!(errors[0].message.starts_with("cannot read the config file"));
    assert!(
        errors[0]
            .to_string()
            .starts_with("/nonexistent/veltrix.toml:1:1: error[V001]: ")
    );
}

#[test]
fn a_file_that_is_not_utf8_is_an_error_at_the_first_bad_byte() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, b"data_dir = \"/x\"\n# caf\xe9\n").unwrap();
    let errors = config::load(file.path(), CORES).unwrap_err();
    assert_eq!((errors[0].line, errors[0].col), (2, 6));
    assert_eq!(errors[0].message, "the config file is not valid UTF-8");
}
