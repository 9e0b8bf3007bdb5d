//! Routing: an event goes to the first queue, in file order, one of whose type patterns matches
//! the event's `type`.
//!
//! Patterns are globs over the whole type: `*` matches any run of characters (including none and
//! including `.`), `?` matches exactly one character, everything else matches itself. The
//! characters `[ ] { } \` are reserved (for classes and alternatives later) and rejected now,
//! as are empty patterns and whitespace.

use std::fmt;

use super::Config;

/// A validated glob pattern over CloudEvents types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypePattern {
    text: String,
    matcher: Matcher,
}

/// How a pattern is matched: the common shapes skip the general algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    /// `*`: everything.
    Any,
    /// No wildcard.
    Exact,
    /// Literal prefix then one trailing `*` (`payment.*`); holds the prefix length.
    Prefix(usize),
    /// Anything else.
    Glob,
}

impl TypePattern {
    /// Validates `text` as a pattern.
    pub fn new(text: &str) -> Result<TypePattern, String> {
        if text.is_empty() {
            return Err("empty type pattern: use `*` to match every type".to_owned());
        }
        if let Some(c) = text.chars().find(|c| {
            matches!(c, '[' | ']' | '{' | '}' | '\\') || c.is_whitespace() || c.is_control()
        }) {
            return Err(format!(
                "invalid type pattern {text:?}: {c:?} is not allowed (patterns use `*` and `?` \
                 wildcards only)"
            ));
        }
        let stars = text.matches('*').count();
        let matcher = if text.chars().all(|c| c == '*') {
            Matcher::Any
        } else if stars == 0 && !text.contains('?') {
            Matcher::Exact
        } else if stars == 1 && text.ends_with('*') && !text.contains('?') {
            Matcher::Prefix(text.len() - 1)
        } else {
            Matcher::Glob
        };
        Ok(TypePattern {
            text: text.to_owned(),
            matcher,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern matches every type.
    pub fn is_catch_all(&self) -> bool {
        self.matcher == Matcher::Any
    }

    /// Whether the pattern has no wildcard.
    pub(crate) fn is_literal(&self) -> bool {
        self.matcher == Matcher::Exact
    }

    /// Whether `ty` matches the pattern.
    pub fn matches(&self, ty: &str) -> bool {
        match self.matcher {
            Matcher::Any => true,
            Matcher::Exact => self.text == ty,
            Matcher::Prefix(len) => ty.as_bytes().starts_with(&self.text.as_bytes()[..len]),
            Matcher::Glob => glob_match(self.text.as_bytes(), ty.as_bytes()),
        }
    }
}

impl fmt::Display for TypePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Glob matching with `*` and `?` in O(|pattern| × |text|) worst case, no allocation.
///
/// Backtracks only to the most recent `*`, which is enough: an earlier star can never need to
/// absorb more once a later star has matched. `?` and star backtracking step over whole UTF-8
/// characters; literals compare byte by byte, which is exact for UTF-8.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let char_len = |b: u8| match b {
        0xf0.. => 4,
        0xe0.. => 3,
        0xc0.. => 2,
        _ => 1,
    };
    let (mut p, mut t) = (0, 0);
    // (pattern index after the last `*`, text index that star currently extends to)
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                p += 1;
                star = Some((p, t));
            }
            Some(b'?') => {
                p += 1;
                t += char_len(text[t]);
            }
            Some(&c) if c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    let next = star_t + char_len(text[star_t]);
                    star = Some((star_p, next));
                    p = star_p;
                    t = next;
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*') && t == text.len()
}

/// A queue, by its index in [`Config::queues`] (file order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueIndex(pub usize);

/// Routes event types to queues: first match in file order.
#[derive(Debug, Clone)]
pub struct Router {
    /// (queue name, its patterns), in file order.
    queues: Vec<(String, Vec<TypePattern>)>,
}

impl Router {
    pub fn new(config: &Config) -> Router {
        Router {
            queues: config
                .queues
                .iter()
                .map(|(name, queue)| (name.clone(), queue.types.clone()))
                .collect(),
        }
    }

    /// The queue for an event of type `ty`, or `None` when no queue takes it.
    pub fn route(&self, ty: &str) -> Option<QueueIndex> {
        self.queues
            .iter()
            .position(|(_, patterns)| patterns.iter().any(|p| p.matches(ty)))
            .map(QueueIndex)
    }

    /// The name of queue `index`.
    ///
    /// # Panics
    /// If `index` did not come from this router.
    pub fn queue_name(&self, index: QueueIndex) -> &str {
        &self.queues[index.0].0
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Reference matcher: the textbook recursive definition, over chars.
    fn reference(pattern: &[char], text: &[char]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some(('*', rest)) => (0..=text.len()).any(|i| reference(rest, &text[i..])),
            Some(('?', rest)) => !text.is_empty() && reference(rest, &text[1..]),
            Some((c, rest)) => text.first() == Some(c) && reference(rest, &text[1..]),
        }
    }

    fn matches(pattern: &str, ty: &str) -> bool {
        TypePattern::new(pattern).unwrap().matches(ty)
    }

    #[test]
    fn wildcards_match_as_documented() {
        assert!(matches("*", ""));
        assert!(matches("*", "anything.at.all"));
        assert!(matches("payment.*", "payment.card.settled"));
        assert!(matches("payment.*", "payment."));
        assert!(!matches("payment.*", "payments"));
        assert!(matches("treasure.claimed", "treasure.claimed"));
        assert!(!matches("treasure.claimed", "treasure.claimed2"));
        assert!(matches("*.created", "order.created"));
        assert!(!matches("*.created", "order.created.v2"));
        assert!(matches("order.v?", "order.v2"));
        assert!(matches("order.v?", "order.vé"));
        assert!(!matches("order.v?", "order.v"));
        assert!(matches("a*b*c", "aXbYbZc"));
        assert!(!matches("a*b*c", "aXbYbZ"));
    }

    #[test]
    fn reserved_characters_and_empty_patterns_are_rejected() {
        for bad in ["", "a[bc]", "{a,b}", "a b", "a\\*"] {
            assert!(TypePattern::new(bad).is_err(), "{bad:?}");
        }
        assert!(TypePattern::new("**").unwrap().is_catch_all());
    }

    proptest! {
        #[test]
        fn glob_agrees_with_the_reference_matcher(
            pattern in "[ab.é*?]{0,8}",
            text in "[ab.é]{0,10}",
        ) {
            prop_assume!(!pattern.is_empty());
            let p: Vec<char> = pattern.chars().collect();
            let t: Vec<char> = text.chars().collect();
            prop_assert_eq!(matches(&pattern, &text), reference(&p, &t));
        }

        #[test]
        fn a_pattern_without_wildcards_matches_only_itself(text in "[a-z.]{1,12}", other in "[a-z.]{1,12}") {
            prop_assert!(matches(&text, &text));
            prop_assert_eq!(matches(&text, &other), text == other);
        }
    }
}
