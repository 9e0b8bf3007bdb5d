//! `${VAR}` / `${VAR:-default}` interpolation from the environment, applied to the config text
//! before TOML parsing (so a variable can supply any value: a string's content, a number...).
//!
//! Rules:
//! - `${VAR}`: the value of `VAR`; an unset `VAR` is an error (located at the `${`).
//! - `${VAR:-default}`: the value of `VAR`, or `default` when `VAR` is unset or empty (as in a
//!   POSIX shell). The default runs to the first `}`.
//! - `$${` is a literal `${`.
//! - Comments are left alone, so a commented-out line never needs its variables.
//! - `VAR` is `[A-Za-z_][A-Za-z0-9_]*`; a `${` without its `}` on the same line is an error.
//!
//! The substituted text is not scanned again. [`Expanded::to_original`] maps every position in
//! the expanded text back to the text as written; a position inside a substituted value maps to
//! its `${`.

use std::ops::Range;

/// The config text after interpolation, with the map back to the text as written.
#[derive(Debug)]
pub(crate) struct Expanded {
    pub text: String,
    /// Substitutions in increasing order.
    subs: Vec<Substitution>,
}

#[derive(Debug)]
struct Substitution {
    /// Byte range of the value in the expanded text.
    out: Range<usize>,
    /// Byte range of the `${...}` in the original text.
    orig: Range<usize>,
}

impl Expanded {
    /// The byte offset in the original text that `pos` (in the expanded text) comes from.
    pub fn to_original(&self, pos: usize) -> usize {
        let after = self.subs.partition_point(|s| s.out.start <= pos);
        let Some(sub) = after.checked_sub(1).map(|i| &self.subs[i]) else {
            return pos;
        };
        if pos < sub.out.end {
            sub.orig.start
        } else {
            pos - sub.out.end + sub.orig.end
        }
    }
}

/// One interpolation problem, located in the original text.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct InterpolationError {
    pub span: Range<usize>,
    pub message: String,
    pub hint: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Normal,
    Comment,
    Basic,
    Literal,
    MultiBasic,
    MultiLiteral,
}

/// Interpolates `src`, looking variables up with `env`; reports every problem.
pub(crate) fn interpolate(
    src: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Expanded, Vec<InterpolationError>> {
    let b = src.as_bytes();
    let at = |i: usize, s: &str| b[i..].starts_with(s.as_bytes());
    let mut text = String::with_capacity(src.len());
    let mut subs = Vec::new();
    let mut errors = Vec::new();
    let mut copied = 0;
    let mut state = State::Normal;
    let mut i = 0;
    while i < b.len() {
        if state != State::Comment && b[i] == b'$' {
            if at(i, "$${") {
                text.push_str(&src[copied..i]);
                let start = text.len();
                text.push_str("${");
                subs.push(Substitution {
                    out: start..text.len(),
                    orig: i..i + 3,
                });
                i += 3;
                copied = i;
                continue;
            }
            if at(i, "${") {
                let line_end = src[i..].find('\n').map_or(src.len(), |n| i + n);
                let Some(close) = src[i..line_end].find('}').map(|n| i + n) else {
                    errors.push(InterpolationError {
                        span: i..i + 2,
                        message: "unterminated `${`".to_owned(),
                        hint: Some("close it with `}`, or write `$${` for a literal `${`".into()),
                    });
                    i += 2;
                    continue;
                };
                match resolve(&src[i + 2..close], env) {
                    Ok(value) => {
                        text.push_str(&src[copied..i]);
                        let start = text.len();
                        text.push_str(&value);
                        subs.push(Substitution {
                            out: start..text.len(),
                            orig: i..close + 1,
                        });
                    }
                    Err((message, hint)) => errors.push(InterpolationError {
                        span: i..close + 1,
                        message,
                        hint,
                    }),
                }
                i = close + 1;
                copied = i;
                continue;
            }
        }
        state = match (state, b[i]) {
            (State::Normal, b'#') => State::Comment,
            (State::Normal, b'"') if at(i, "\"\"\"") => {
                i += 3;
                state = State::MultiBasic;
                continue;
            }
            (State::Normal, b'\'') if at(i, "'''") => {
                i += 3;
                state = State::MultiLiteral;
                continue;
            }
            (State::Normal, b'"') => State::Basic,
            (State::Normal, b'\'') => State::Literal,
            (State::Comment, b'\n') => State::Normal,
            (State::Basic | State::MultiBasic, b'\\') => {
                i += 2;
                continue;
            }
            (State::Basic, b'"' | b'\n') | (State::Literal, b'\'' | b'\n') => State::Normal,
            (State::MultiBasic, b'"') if at(i, "\"\"\"") => {
                i += 3;
                state = State::Normal;
                continue;
            }
            (State::MultiLiteral, b'\'') if at(i, "'''") => {
                i += 3;
                state = State::Normal;
                continue;
            }
            (state, _) => state,
        };
        i += 1;
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    text.push_str(&src[copied..]);
    Ok(Expanded { text, subs })
}

/// The value for the inside of `${...}`.
fn resolve(
    inner: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, (String, Option<String>)> {
    let (name, default) = match inner.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (inner, None),
    };
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err((
            format!("invalid environment variable name `{name}`"),
            Some("names are letters, digits and `_`, not starting with a digit".to_owned()),
        ));
    }
    match (env(name), default) {
        (Some(value), Some(default)) if value.is_empty() => Ok(default.to_owned()),
        (Some(value), _) => Ok(value),
        (None, Some(default)) => Ok(default.to_owned()),
        (None, None) => Err((
            format!("environment variable `{name}` is not set"),
            Some(format!("set it, or give a default: `${{{name}:-value}}`")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("9000".to_owned()),
            "EMPTY" => Some(String::new()),
            "LONG" => Some("a-much-longer-value".to_owned()),
            _ => None,
        }
    }

    fn expand(src: &str) -> Result<String, Vec<InterpolationError>> {
        interpolate(src, &env).map(|e| e.text)
    }

    #[test]
    fn set_variables_are_substituted() {
        assert_eq!(expand("port = ${PORT}\n").unwrap(), "port = 9000\n");
    }

    #[test]
    fn defaults_apply_when_unset_or_empty() {
        assert_eq!(
            expand("a = \"${NOPE:-x y}\"\nb = \"${EMPTY:-d}\"\nc = \"${PORT:-1}\"").unwrap(),
            "a = \"x y\"\nb = \"d\"\nc = \"9000\""
        );
        assert_eq!(expand("a = \"${EMPTY}\"").unwrap(), "a = \"\"");
    }

    #[test]
    fn unset_variables_without_default_are_errors_at_their_location() {
        let errors = expand("a = 1\nb = \"${NOPE}\" # ${ALSO_NOPE}\nc = ${X-1}").unwrap_err();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].span, 11..18);
        assert_eq!(errors[0].message, "environment variable `NOPE` is not set");
        assert_eq!(
            errors[0].hint.as_deref(),
            Some("set it, or give a default: `${NOPE:-value}`")
        );
        assert_eq!(errors[1].message, "invalid environment variable name `X-1`");
    }

    #[test]
    fn comments_are_not_interpolated_but_strings_are() {
        let src = "# ${UNSET}\na = '${PORT}' # ${UNSET}\nb = \"\"\"\n${PORT}\"\"\"";
        assert_eq!(
            expand(src).unwrap(),
            "# ${UNSET}\na = '9000' # ${UNSET}\nb = \"\"\"\n9000\"\"\""
        );
        assert_eq!(expand("a = \"# ${PORT}\"").unwrap(), "a = \"# 9000\"");
    }

    #[test]
    fn double_dollar_escapes_a_literal_placeholder() {
        assert_eq!(expand("a = \"$${PORT} $5\"").unwrap(), "a = \"${PORT} $5\"");
    }

    #[test]
    fn unterminated_placeholders_are_errors() {
        let errors = expand("a = \"${PORT\"\n").unwrap_err();
        assert_eq!(errors[0].message, "unterminated `${`");
        assert_eq!(errors[0].span, 5..7);
    }

    #[test]
    fn positions_map_back_to_the_original_text() {
        let src = "a = \"${LONG}\"\nb = ${PORT}\nc = 1";
        let expanded = interpolate(src, &env).unwrap();
        let c_out = expanded.text.find("c = 1").unwrap();
        assert_eq!(expanded.to_original(c_out), src.find("c = 1").unwrap());
        let inside = expanded.text.find("longer").unwrap();
        assert_eq!(expanded.to_original(inside), src.find("${LONG}").unwrap());
        assert_eq!(expanded.to_original(0), 0);
    }
}
