//! Config diagnostics: every error and warning names `file:line:col` in the file as written
//! (before `${VAR}` interpolation), shows the offending line with carets, and says how to fix it.

use std::fmt;
use std::ops::Range;

use super::interpolate::Expanded;

/// How bad a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The config cannot be used.
    Error,
    /// Legal but suspicious.
    Warning,
}

impl Severity {
    /// `error` or `warning`, as rendered.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One problem in a config file, located at the offending key or value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The stable code of this kind of finding (`V004`), documented in `docs/config-lints.md`;
    /// `None` for a finding that has none yet.
    pub code: Option<&'static str>,
    /// The file name as given to the loader.
    pub file: String,
    /// 1-based line in the file as written.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// How many characters from `col` the carets underline (at least 1).
    pub width: usize,
    pub message: String,
    /// The offending source line (without its line break); empty when there is none.
    pub snippet: String,
    /// How to fix it, if we can say.
    pub hint: Option<String>,
    /// Extra context (for example the details of a VRL compile error).
    pub notes: Vec<String>,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// This diagnostic with its stable code.
    #[must_use]
    pub fn with_code(mut self, code: &'static str) -> Diagnostic {
        self.code = Some(code);
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = self.severity.as_str();
        match self.code {
            Some(code) => writeln!(
                f,
                "{}:{}:{}: {severity}[{code}]: {}",
                self.file, self.line, self.col, self.message
            )?,
            None => writeln!(
                f,
                "{}:{}:{}: {severity}: {}",
                self.file, self.line, self.col, self.message
            )?,
        }
        let gutter = self.line.to_string().len() + 1;
        if !self.snippet.is_empty() {
            // Keep tabs so the carets line up under the snippet as the terminal renders it.
            let indent: String = self
                .snippet
                .chars()
                .take(self.col.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            writeln!(f, "{:gutter$}|", "")?;
            writeln!(f, "{:<w$}| {}", self.line, self.snippet, w = gutter)?;
            writeln!(
                f,
                "{:gutter$}| {indent}{}",
                "",
                "^".repeat(self.width.max(1))
            )?;
        }
        for note in &self.notes {
            writeln!(f, "{:gutter$}= note: {note}", "")?;
        }
        if let Some(hint) = &self.hint {
            writeln!(f, "{:gutter$}= hint: {hint}", "")?;
        }
        Ok(())
    }
}

/// A config source: the text as written, the text after interpolation (what TOML parses), and
/// the mapping between the two, so positions are always reported in the text as written.
pub(crate) struct Source<'a> {
    pub file: &'a str,
    pub original: &'a str,
    pub expanded: Expanded,
}

impl Source<'_> {
    /// A diagnostic at `span` (byte range in the *expanded* text).
    pub fn diagnostic(
        &self,
        severity: Severity,
        span: Range<usize>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Diagnostic {
        let start = self.expanded.to_original(span.start);
        let end = self
            .expanded
            .to_original(span.end.max(span.start))
            .max(start);
        diagnostic_at(
            self.file,
            self.original,
            start..end,
            severity,
            message,
            hint,
        )
    }
}

/// A diagnostic at `span`, a byte range of `text` (the file as written).
pub(crate) fn diagnostic_at(
    file: &str,
    text: &str,
    span: Range<usize>,
    severity: Severity,
    message: impl Into<String>,
    hint: Option<String>,
) -> Diagnostic {
    let start = floor_char_boundary(text, span.start.min(text.len()));
    let end = floor_char_boundary(text, span.end.min(text.len())).max(start);
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = text[..start].matches('\n').count() + 1;
    let col = text[line_start..start].chars().count() + 1;
    let width = text[start..end.min(line_end)].chars().count().max(1);
    Diagnostic {
        severity,
        code: None,
        file: file.to_owned(),
        line,
        col,
        width,
        message: message.into(),
        snippet: text[line_start..line_end].trim_end_matches('\r').to_owned(),
        hint,
        notes: Vec::new(),
    }
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// "did you mean `x`?" for the candidate closest to `word`, if any is close enough.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_shows_location_snippet_carets_and_hint() {
        let text = "a = 1\n  adress = \"x\"\n";
        let mut d = diagnostic_at(
            "veltrix.toml",
            text,
            8..14,
            Severity::Error,
            "unknown key `adress`",
            Some("did you mean `address`?".to_owned()),
        );
        d.notes.push("extra".to_owned());
        assert_eq!((d.line, d.col, d.width), (2, 3, 6));
        assert!(
            d.to_string()
                .starts_with("veltrix.toml:2:3: error: unknown key")
        );
        let d = d.with_code("V004");
        assert_eq!(
            d.to_string(),
            "veltrix.toml:2:3: error[V004]: unknown key `adress`\n  \
             |\n\
             2 |   adress = \"x\"\n  \
             |   ^^^^^^\n  \
             = note: extra\n  \
             = hint: did you mean `address`?\n"
        );
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let d = diagnostic_at("f", "k = \"é\" x", 9..10, Severity::Warning, "m", None);
        assert_eq!((d.line, d.col), (1, 9));
    }

    #[test]
    fn did_you_mean_suggests_only_close_candidates() {
        let keys = ["address", "body_bytes_max", "type"];
        assert_eq!(
            did_you_mean("adress", keys).as_deref(),
            Some("did you mean `address`?")
        );
        assert_eq!(did_you_mean("zzz", keys), None);
    }
}
