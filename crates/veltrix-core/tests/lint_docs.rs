//! `docs/config-lints.md` cannot drift from the code: every finding code written anywhere in the
//! workspace's Rust source (a `"V0NN"` string) has its section there, and every documented code
//! exists in `config::lints::codes`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `V0NN` (two digits after `V0`) right after `prefix` in `text`.
fn codes_after(text: &str, prefix: &str) -> BTreeSet<String> {
    text.match_indices(prefix)
        .filter_map(|(i, _)| {
            let code = text.get(i + prefix.len()..i + prefix.len() + 4)?;
            let digits = code.strip_prefix("V0")?;
            digits
                .chars()
                .all(|c| c.is_ascii_digit())
                .then(|| code.to_owned())
        })
        .collect()
}

#[test]
fn every_code_in_the_source_is_documented_and_every_documented_code_exists() {
    let mut files = Vec::new();
    rust_files(&workspace().join("crates"), &mut files);
    assert!(files.len() > 20, "found only {} Rust files", files.len());
    let mut used = BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for code in codes_after(&text, "\"") {
            used.insert(code);
        }
    }
    let docs = std::fs::read_to_string(workspace().join("docs/config-lints.md")).unwrap();
    let documented = codes_after(&docs, "\n### ");
    let undocumented: Vec<_> = used.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "codes used in the source without a `### CODE` section in docs/config-lints.md: \
         {undocumented:?}"
    );
    let lints =
        std::fs::read_to_string(workspace().join("crates/veltrix-core/src/config/lints.rs"))
            .unwrap();
    let defined = codes_after(&lints, "&str = \"");
    let stale: Vec<_> = documented.difference(&defined).collect();
    assert!(
        stale.is_empty(),
        "codes documented but not defined in config::lints::codes: {stale:?}"
    );
    assert!(defined.len() >= 30, "{defined:?}");
    // Each code is also in the summary table.
    for code in &defined {
        assert!(
            docs.contains(&format!("| [{code}](#{}) |", code.to_lowercase())),
            "{code} is missing from the table of docs/config-lints.md"
        );
    }
}
