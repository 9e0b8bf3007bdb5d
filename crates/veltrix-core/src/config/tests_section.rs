//! `[[tests]]`: unit tests of pipelines written in the config itself.
//!
//! ```toml
//! [[tests]]
//! name = "big orders get a total"
//! pipeline = "archive"
//! input = [{ type = "order.created", source = "/shop", id = "1", data = { amount = 200, qty = 2 } }]
//! expect = [{ data = { total = 400 } }]   # or `expect_none = true`, `expect_dead_letter = "reason"`
//! ```
//!
//! Decoding checks everything that can be checked without running a processor: the keys and
//! their types, that `pipeline` names a pipeline, and that every `input` is a valid CloudEvent
//! (validated exactly as ingest validates a structured-mode body; `specversion` may be left
//! out). Running the tests against the real processors is `veltrix_engine::testing`.
//!
//! Inputs and expectations are kept as JSON (TOML values converted: datetimes become RFC 3339
//! strings; floats must be finite), the form events take on the wire and in sinks.

use std::fmt;
use std::ops::Range;

use serde_json::{Map, Number, Value as Json};
use toml::de::{DeTable, DeValue};

use super::{Decoder, Severity, Value, codes, get};
use crate::event::{self, SPEC_VERSION};

/// The keys of a `[[tests]]` table.
pub(super) const TEST_KEYS: &[&str] = &[
    "name",
    "pipeline",
    "input",
    "expect",
    "expect_none",
    "expect_dead_letter",
    "expect_sinks",
    "expect_emitted",
];

/// Where something was declared: `file:line:col` in the file as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

/// One `[[tests]]` table.
///
/// Every outcome of the inputs is checked: the events the sink receives must match `expect`, in
/// order and in number (none when `expect` is absent, which `expect_none = true` says
/// explicitly), and the events dead-lettered must match `expect_dead_letter` (none when absent).
/// Filtered events are neither.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigTest {
    /// Unique among the config's tests.
    pub name: String,
    /// The pipeline whose processors run (names a pipeline of the config).
    pub pipeline: String,
    /// Structured-mode CloudEvents (JSON objects, `specversion` filled in), each valid.
    pub input: Vec<Json>,
    /// Subset patterns of the delivered events, in order (empty: nothing is delivered).
    pub expect: Vec<Json>,
    /// Whether (and why) events must be dead-lettered.
    pub expect_dead_letter: Option<DeadLetterExpectation>,
    /// When given, the sink of each delivered event, in order (a pipeline with `routes`).
    pub expect_sinks: Option<Vec<String>>,
    /// Subset patterns of the derived events the pipeline's aggregates emit when the test ends
    /// (every open window closes then), in order (empty: none).
    pub expect_emitted: Vec<Json>,
    /// Where the test's table starts.
    pub location: Location,
}

/// `expect_dead_letter = true` or `expect_dead_letter = "reason substring"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterExpectation {
    /// At least one event is dead-lettered, for any reason.
    Any,
    /// At least one event is dead-lettered, and every dead-letter reason contains this text.
    ReasonContains(String),
}

impl Decoder<'_> {
    /// The `[[tests]]` of the root table; `pipelines` are the pipeline names that exist.
    pub(super) fn tests(&mut self, root: &DeTable<'_>, pipelines: &[&str]) -> Vec<ConfigTest> {
        let Some(value) = get(root, "tests") else {
            return Vec::new();
        };
        let hint = "write each test as a `[[tests]]` table";
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(value, "tests", "an array of tables", Some(hint.to_owned()));
            return Vec::new();
        };
        let mut tests: Vec<ConfigTest> = Vec::new();
        for item in items.iter() {
            let Some(test) = self.test(item, pipelines) else {
                continue;
            };
            if tests.iter().any(|t| t.name == test.name) {
                let span = item
                    .get_ref()
                    .as_table()
                    .and_then(|t| get(t, "name"))
                    .map_or(item.span(), |v| v.span());
                self.error_coded(
                    codes::CONFLICT,
                    span,
                    format!("two tests are named `{}`", test.name),
                    Some("give every test its own name".to_owned()),
                );
                continue;
            }
            tests.push(test);
        }
        tests
    }

    fn test(&mut self, item: &Value<'_>, pipelines: &[&str]) -> Option<ConfigTest> {
        let DeValue::Table(table) = item.get_ref() else {
            self.wrong_type(
                item,
                "tests",
                "an array of tables",
                Some("write each test as a `[[tests]]` table".to_owned()),
            );
            return None;
        };
        let name = match get(table, "name") {
            Some(v) => self.non_empty_string(v, "name"),
            None => {
                let hint = "add `name = \"what it checks\"`";
                self.missing(table, "name", item.span(), "test", hint.to_owned());
                None
            }
        };
        let what = name
            .as_ref()
            .map_or_else(|| "test".to_owned(), |n| format!("test `{n}`"));
        self.check_keys(table, &what, TEST_KEYS);
        let mut valid = name.is_some();

        let pipeline = match get(table, "pipeline") {
            None => {
                let hint = match pipelines {
                    [only] => format!("add `pipeline = \"{only}\"`"),
                    _ => "add `pipeline = \"NAME\"`: the pipeline whose processors run".to_owned(),
                };
                self.missing(table, "pipeline", item.span(), &what, hint);
                None
            }
            Some(v) => match self.string(v, "pipeline") {
                Some(p) if pipelines.contains(&p.as_str()) => Some(p),
                Some(p) => {
                    let hint = super::reference_hint(&p, pipelines, "pipelines");
                    self.error_coded(
                        codes::UNKNOWN_REFERENCE,
                        v.span(),
                        format!("unknown pipeline `{p}`"),
                        Some(hint),
                    );
                    None
                }
                None => None,
            },
        };
        valid &= pipeline.is_some();

        let mut input = Vec::new();
        match get(table, "input") {
            None => {
                valid = false;
                let hint = "add `input = [{ type = \"order.created\", source = \"/shop\", data = { amount = 1 } }]`";
                self.missing(table, "input", item.span(), &what, hint.to_owned());
            }
            Some(v) => match self.tables(v, "input") {
                None => valid = false,
                Some(events) if events.is_empty() => {
                    valid = false;
                    self.error_coded(
                        codes::INVALID_VALUE,
                        v.span(),
                        "`input` must hold at least one event",
                        None,
                    );
                }
                Some(events) => {
                    for (i, event) in events.into_iter().enumerate() {
                        match self.input_event(event, i) {
                            Some(json) => input.push(json),
                            None => valid = false,
                        }
                    }
                }
            },
        }

        let mut expect = None;
        if let Some(v) = get(table, "expect") {
            match self.patterns(v, "expect") {
                Some(out) => expect = Some((out, v.span())),
                None => valid = false,
            }
        }
        let mut expect_emitted = Vec::new();
        if let Some(v) = get(table, "expect_emitted") {
            match self.patterns(v, "expect_emitted") {
                Some(out) => expect_emitted = out,
                None => valid = false,
            }
        }
        let mut expect_sinks = None;
        if let Some(v) = get(table, "expect_sinks") {
            match self.strings(v, "expect_sinks", false) {
                Some(sinks) => {
                    let count = expect.as_ref().map_or(0, |(e, _): &(Vec<Json>, _)| e.len());
                    if sinks.len() != count {
                        valid = false;
                        self.error_coded(
                            codes::CONFLICT,
                            v.span(),
                            format!(
                                "`expect_sinks` names {} sink(s) but `expect` lists {count} \
                                 event(s)",
                                sinks.len()
                            ),
                            Some("name the sink of each expected event, in order".to_owned()),
                        );
                    }
                    expect_sinks = Some(sinks.into_iter().map(|(s, _)| s).collect());
                }
                None => valid = false,
            }
        }
        let mut expect_none = false;
        if let Some(v) = get(table, "expect_none") {
            match v.get_ref() {
                DeValue::Boolean(b) => expect_none = *b,
                _ => {
                    valid = false;
                    self.wrong_type(v, "expect_none", "a boolean", None);
                }
            }
            if let (true, Some((patterns, span))) = (expect_none, &expect)
                && !patterns.is_empty()
            {
                valid = false;
                self.error_coded(
                    codes::CONFLICT,
                    span.clone(),
                    "`expect` lists events but `expect_none = true` says none is delivered",
                    Some("keep one of them".to_owned()),
                );
            }
        }
        let expect_dead_letter = match get(table, "expect_dead_letter") {
            None => None,
            Some(v) => match v.get_ref() {
                DeValue::Boolean(true) => Some(DeadLetterExpectation::Any),
                DeValue::Boolean(false) => None,
                DeValue::String(s) if !s.is_empty() => {
                    Some(DeadLetterExpectation::ReasonContains(s.to_string()))
                }
                DeValue::String(_) => {
                    valid = false;
                    let hint = "write `expect_dead_letter = true` to accept any reason";
                    self.error_coded(
                        codes::INVALID_VALUE,
                        v.span(),
                        "`expect_dead_letter` must not be empty",
                        Some(hint.to_owned()),
                    );
                    None
                }
                _ => {
                    valid = false;
                    let hint = "`true`, or a text the dead-letter reason contains";
                    let expected = "a boolean or a string";
                    self.wrong_type(v, "expect_dead_letter", expected, Some(hint.to_owned()));
                    None
                }
            },
        };
        // A key present with a wrong type is already reported.
        let has_expectation = get(table, "expect").is_some()
            || get(table, "expect_none")
                .is_some_and(|v| !matches!(v.get_ref(), DeValue::Boolean(false)))
            || get(table, "expect_dead_letter").is_some()
            || get(table, "expect_emitted").is_some();
        if !has_expectation {
            valid = false;
            self.error_coded(
                codes::MISSING_KEY,
                item.span(),
                format!("{what} expects nothing"),
                Some(
                    "add `expect = [{ ... }]`, `expect_none = true`, `expect_dead_letter = true` \
                     or `expect_emitted = [{ ... }]`"
                        .to_owned(),
                ),
            );
        }
        if !valid {
            return None;
        }
        let location = self.location(item.span());
        Some(ConfigTest {
            name: name?,
            pipeline: pipeline?,
            input,
            expect: expect.map(|(e, _)| e).unwrap_or_default(),
            expect_dead_letter,
            expect_sinks,
            expect_emitted,
            location,
        })
    }

    /// An array of subset patterns (tables), as JSON.
    fn patterns(&mut self, value: &Value<'_>, name: &str) -> Option<Vec<Json>> {
        let tables = self.tables(value, name)?;
        let mut out = Vec::new();
        let mut valid = true;
        for pattern in tables {
            match self.json(pattern) {
                Some(json) => out.push(json),
                None => valid = false,
            }
        }
        valid.then_some(out)
    }

    fn location(&self, span: Range<usize>) -> Location {
        let d = self.source.diagnostic(Severity::Warning, span, "", None);
        Location {
            file: d.file,
            line: d.line,
            col: d.col,
        }
    }

    /// An array of tables (inline or not), each as a value with its span.
    fn tables<'t, 'i>(&mut self, value: &'t Value<'i>, name: &str) -> Option<Vec<&'t Value<'i>>> {
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(value, name, "an array of tables", None);
            return None;
        };
        let mut out = Vec::new();
        let mut valid = true;
        for (i, item) in items.iter().enumerate() {
            if matches!(item.get_ref(), DeValue::Table(_)) {
                out.push(item);
            } else {
                valid = false;
                self.wrong_type(item, &format!("{name}[{i}]"), "a table", None);
            }
        }
        valid.then_some(out)
    }

    /// One input event: JSON, `specversion` filled in, validated as ingest validates it.
    fn input_event(&mut self, value: &Value<'_>, index: usize) -> Option<Json> {
        let mut json = self.json(value)?;
        if let Json::Object(map) = &mut json
            && !map.contains_key("specversion")
        {
            map.insert("specversion".to_owned(), Json::from(SPEC_VERSION));
        }
        let body = serde_json::to_vec(&json).expect("JSON values always serialise");
        let no_headers: &[(&str, &str)] = &[];
        match event::decode_body("application/cloudevents+json", no_headers, &body) {
            Ok(_) => Some(json),
            Err(e) => {
                let message = match e {
                    event::DecodeError::Invalid(errors) => errors
                        .into_iter()
                        .map(|e| e.message)
                        .collect::<Vec<_>>()
                        .join("; "),
                    other => other.to_string(),
                };
                self.error_coded(
                    codes::INVALID_VALUE,
                    value.span(),
                    format!("input[{index}] is not a valid CloudEvent: {message}"),
                    Some(
                        "an event needs `source` and `type` (and `id`, else one is generated)"
                            .to_owned(),
                    ),
                );
                None
            }
        }
    }

    /// A TOML value as JSON; every value that has no JSON form is reported.
    fn json(&mut self, value: &Value<'_>) -> Option<Json> {
        match value.get_ref() {
            DeValue::String(s) => Some(Json::String(s.to_string())),
            DeValue::Boolean(b) => Some(Json::Bool(*b)),
            DeValue::Datetime(d) => Some(Json::String(d.to_string())),
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(Json::from(n)),
                Err(_) => {
                    self.error_coded(
                        codes::INVALID_VALUE,
                        value.span(),
                        "integer out of range",
                        None,
                    );
                    None
                }
            },
            DeValue::Float(f) => match f.as_str().parse::<f64>().ok().and_then(Number::from_f64) {
                Some(n) => Some(Json::Number(n)),
                None => {
                    self.error_coded(
                        codes::INVALID_VALUE,
                        value.span(),
                        format!("`{}` has no JSON form", f.as_str()),
                        Some("JSON numbers are finite".to_owned()),
                    );
                    None
                }
            },
            DeValue::Array(items) => {
                let mut out = Vec::new();
                let mut valid = true;
                for item in items.iter() {
                    match self.json(item) {
                        Some(j) => out.push(j),
                        None => valid = false,
                    }
                }
                valid.then_some(Json::Array(out))
            }
            DeValue::Table(table) => {
                let mut out = Map::new();
                let mut valid = true;
                for (k, v) in table.iter() {
                    match self.json(v) {
                        Some(j) => {
                            out.insert(k.get_ref().to_string(), j);
                        }
                        None => valid = false,
                    }
                }
                valid.then_some(Json::Object(out))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::{Diagnostic, Loaded, parse_str_with_env};
    use super::*;

    const BASE: &str = r#"
[queues.default]
types = ["*"]

[pipelines.main]
from = ["default"]
sink = "out"
processors = [{ type = "remap", source = '.data.total = 1' }]

[sinks.out]
type = "blackhole"
"#;

    fn parse(src: &str) -> Result<Loaded, Vec<Diagnostic>> {
        parse_str_with_env(src, "veltrix.toml", 2, &|_| None)
    }

    fn with_base(tests: &str) -> String {
        format!("{BASE}{tests}")
    }

    /// The line of `needle` in `src` (1-based).
    fn line_of(src: &str, needle: &str) -> usize {
        let at = src.find(needle).expect("needle in src");
        src[..at].matches('\n').count() + 1
    }

    fn errors(src: &str) -> Vec<Diagnostic> {
        match parse(src) {
            Ok(loaded) => panic!("expected errors, got {:?}", loaded.config.tests),
            Err(d) => d.into_iter().filter(Diagnostic::is_error).collect(),
        }
    }

    #[track_caller]
    fn one_error(src: &str, line: usize, col: usize, message: &str) -> Diagnostic {
        let errors = errors(src);
        let rendered: String = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 1, "{rendered}");
        let e = errors.into_iter().next().expect("one");
        assert_eq!((e.line, e.col), (line, col), "{e}");
        assert!(e.message.contains(message), "{e}");
        e
    }

    #[test]
    fn tests_are_read_with_their_location() {
        let src = with_base(
            r#"
[[tests]]
name = "totals"
pipeline = "main"
input = [{ type = "order.created", source = "/shop", id = "1", time = 2024-05-01T10:00:00Z, data = { amount = 200, qty = 2, ratio = 0.5, tags = ["a"] } }]
expect = [{ data = { total = 1 } }]

[[tests]]
name = "nothing"
pipeline = "main"
input = [{ type = "t", source = "/s" }]
expect_none = true
expect_dead_letter = "remap"
"#,
        );
        let tests = parse(&src).expect("valid").config.tests;
        assert_eq!(tests.len(), 2);
        let t = &tests[0];
        assert_eq!((t.name.as_str(), t.pipeline.as_str()), ("totals", "main"));
        assert_eq!(
            t.input,
            [
                json!({"type": "order.created", "source": "/shop", "id": "1",
                "time": "2024-05-01T10:00:00Z", "specversion": "1.0",
                "data": {"amount": 200, "qty": 2, "ratio": 0.5, "tags": ["a"]}})
            ]
        );
        assert_eq!(t.expect, [json!({"data": {"total": 1}})]);
        assert_eq!(t.expect_dead_letter, None);
        assert_eq!(t.location.file, "veltrix.toml");
        assert_eq!(t.location.line, line_of(&src, "name = \"totals\"") - 1);
        assert_eq!(
            t.location.to_string(),
            format!("veltrix.toml:{}:1", t.location.line)
        );
        assert_eq!(tests[1].expect, Vec::<Json>::new());
        assert_eq!(
            tests[1].expect_dead_letter,
            Some(DeadLetterExpectation::ReasonContains("remap".to_owned()))
        );
    }

    #[test]
    fn the_default_topology_can_be_tested() {
        let src = "[[tests]]\nname = \"t\"\npipeline = \"default\"\ninput = [{ type = \"t\", source = \"/s\" }]\nexpect = [{ type = \"t\" }]\n";
        let tests = parse(src).expect("valid").config.tests;
        assert_eq!(tests[0].pipeline, "default");
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_located() {
        let src = with_base(
            "[[tests]]\nname = \"t\"\npipeline = \"main\"\ninput = [{ type = \"t\", source = \"/s\" }]\nexpct = []\n",
        );
        let errors = errors(&src);
        let line = line_of(&src, "expct");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!((errors[0].line, errors[0].col), (line - 4, 1));
        assert!(
            errors[0].message.contains("expects nothing"),
            "{}",
            errors[0]
        );
        assert_eq!((errors[1].line, errors[1].col), (line, 1));
        assert_eq!(errors[1].message, "unknown key `expct` in test `t`");
        assert_eq!(errors[1].hint.as_deref(), Some("did you mean `expect`?"));

        let src = with_base(
            "[[tests]]\nname = \"t\"\npipeline = \"main\"\ninput = [{ type = \"t\", source = \"/s\" }]\nexpect_none = \"yes\"\n",
        );
        one_error(
            &src,
            line_of(&src, "expect_none"),
            15,
            "`expect_none` must be a boolean, found a string",
        );

        let src = with_base(
            "[[tests]]\nname = \"t\"\npipeline = \"main\"\ninput = [1]\nexpect_none = true\n",
        );
        one_error(
            &src,
            line_of(&src, "input"),
            10,
            "`input[0]` must be a table, found an integer",
        );

        let src = format!("tests = 3\n{BASE}");
        one_error(
            &src,
            line_of(&src, "tests"),
            9,
            "`tests` must be an array of tables",
        );
    }

    #[test]
    fn references_and_inputs_are_checked() {
        let src = with_base(
            "[[tests]]\nname = \"t\"\npipeline = \"mian\"\ninput = [{ type = \"t\", source = \"/s\" }]\nexpect_none = true\n",
        );
        let e = one_error(
            &src,
            line_of(&src, "\"mian\""),
            12,
            "unknown pipeline `mian`",
        );
        assert_eq!(e.hint.as_deref(), Some("did you mean `main`?"));

        let src = with_base(
            "[[tests]]\nname = \"t\"\npipeline = \"main\"\ninput = [{ type = \"t\", source = \"/s\" }, { type = \"t\" }]\nexpect_none = true\n",
        );
        let line = line_of(&src, "input");
        let e = one_error(&src, line, 41, "input[1] is not a valid CloudEvent");
        assert!(
            e.message.contains("missing required attribute `source`"),
            "{e}"
        );
    }

    #[test]
    fn missing_and_conflicting_expectations_are_errors() {
        let src = with_base("[[tests]]\nname = \"t\"\npipeline = \"main\"\n");
        let errors = errors(&src);
        let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            messages,
            ["test `t` is missing `input`", "test `t` expects nothing"]
        );

        let src = with_base(
            "[[tests]]\nname = \"t\"\npipeline = \"main\"\ninput = [{ type = \"t\", source = \"/s\" }]\nexpect = [{}]\nexpect_none = true\n",
        );
        one_error(
            &src,
            line_of(&src, "expect = "),
            10,
            "`expect_none = true` says none",
        );

        let src = with_base(
            "[[tests]]\nname = \"t\"\npipeline = \"main\"\ninput = [{ type = \"t\", source = \"/s\" }]\nexpect_none = true\n\n[[tests]]\nname = \"t\"\npipeline = \"main\"\ninput = [{ type = \"t\", source = \"/s\" }]\nexpect_none = true\n",
        );
        let line = src
            .rfind("name = \"t\"")
            .map(|at| src[..at].matches('\n').count() + 1);
        one_error(&src, line.expect("found"), 8, "two tests are named `t`");
    }
}
