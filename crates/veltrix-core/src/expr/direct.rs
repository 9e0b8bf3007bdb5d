//! Programs evaluated without VRL's runtime ([`Direct`]).
//!
//! Most filters, route conditions and remaps are small: comparisons of event attributes with
//! constants (`.type != "debug.ping"`), arithmetic on fields with a default for a missing or
//! mistyped one (`.data.total = (int(.data.amount) ?? 0) * (int(.data.qty) ?? 1)`). For those,
//! VRL's runtime costs more than the work: a run clears its state, resolves the expression tree
//! through dynamic calls, clones every attribute it reads out of the event and wraps each error
//! in a call-site message. A program in the subset below is also kept as a [`Direct`] and
//! evaluated by walking its parse tree directly on the event.
//!
//! The subset: statements that are expressions or assignments to event paths
//! (`.data.total = …`); expressions made of event paths (`.a.b`, `.items[0]`), literals
//! (strings without templates, raw strings, integers, floats, booleans, `null`), `==`, `!=`,
//! `<`, `<=`, `>`, `>=`, `+`, `-`, `*`, `/`, `&&`, `||`, `!`, `??`, parentheses, `exists(.path)`
//! and the type assertions `int`, `float`, `string`, `bool`, `object` and `array` (without `!`).
//! Anything else (other functions, variables, metadata, `|`, `if`, `abort`, regexes, assignments
//! to `.` or inside expressions) leaves the whole program to VRL.
//!
//! Why it is the same program: it is still compiled by VRL first (so every check, type and
//! diagnostic is VRL's; an unhandled fallible expression never gets here), each operator calls
//! VRL's own arithmetic (`eq_lossy`, `try_mul`, `try_and`, …: what its operators call) on the
//! value VRL's query would read (the event's [`EventTarget::get`], `null` when missing), errors
//! are VRL's errors with VRL's messages, operands are evaluated in VRL's order with its
//! short-circuits, and an assignment inserts through [`EventTarget::insert`] as VRL's does. A
//! path compared with a string literal is first asked of the event as text
//! ([`EventTarget::is_text`]: a stored string without escapes is its bytes, which is what `==`
//! compares), so a filter on `.type` builds no value at all.
//! Property tests run both on the same events and compare results and written events.

use std::borrow::Cow;

use vrl::compiler::ExpressionError;
use vrl::compiler::value::{ValueError, VrlValueArithmetic, VrlValueConvert};
use vrl::parser::ast::{
    self, AssignmentOp, AssignmentTarget, Container, Expr, Literal, Opcode, QueryTarget, RootExpr,
    Unary,
};
use vrl::path::{OwnedSegment, PathPrefix};
use vrl::value::Value;

use super::EventTarget;

/// A program in the subset the module documentation describes: its statements, in order.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Direct {
    /// Never empty.
    statements: Vec<Statement>,
}

#[derive(Debug, Clone, PartialEq)]
enum Statement {
    /// `.path = value`.
    Assign(Vec<OwnedSegment>, Node),
    Expr(Node),
}

/// An expression of the subset.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// The event's value at this path (`null` when there is none).
    Path(Vec<OwnedSegment>),
    Literal(Value),
    /// `exists(.path)`: whether the event has a value at the path.
    Exists(Vec<OwnedSegment>),
    Not(Box<Node>),
    Binary(Binary, Box<Node>, Box<Node>),
    /// `a ?? b`: `b` when `a` fails.
    Coalesce(Box<Node>, Box<Node>),
    /// `int(a)` and the other type assertions: `a` when it has the type, else an error.
    Assert(Assertion, Box<Node>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Binary {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    And,
    Or,
}

/// A type assertion call.
#[derive(Debug, Clone, PartialEq)]
struct Assertion {
    /// Index into [`ASSERTIONS`].
    function: usize,
    /// Where the call is in the source (VRL's error message says).
    span: (usize, usize),
}

/// A type assertion: function name, the type's name in VRL's messages, and the test.
type AssertionFn = (&'static str, &'static str, fn(&Value) -> bool);

/// The type assertions of the subset.
const ASSERTIONS: [AssertionFn; 6] = [
    ("int", "integer", Value::is_integer),
    ("float", "float", Value::is_float),
    ("string", "string", Value::is_bytes),
    ("bool", "boolean", Value::is_boolean),
    ("object", "object", Value::is_object),
    ("array", "array", Value::is_array),
];

/// What a missing path reads as.
static NULL: Value = Value::Null;

impl Direct {
    /// The program `source` as a [`Direct`], if it is made only of the subset. `source` must
    /// already have compiled as VRL.
    pub(super) fn of(source: &str) -> Option<Direct> {
        let program = vrl::parser::parse(source).ok()?;
        let statements = program
            .0
            .into_iter()
            .map(|root| match root.into_inner() {
                RootExpr::Expr(expr) => Statement::of(expr.into_inner()),
                RootExpr::Error(_) => None,
            })
            .collect::<Option<Vec<_>>>()?;
        (!statements.is_empty()).then_some(Direct { statements })
    }

    /// Runs the program on `event`: the value of its last statement (`null` unless
    /// `value_wanted`: a remap's value is dropped, so an assigned value is not cloned for it), or
    /// the error VRL's runtime would give. A value the event cannot give VRL is reported by the
    /// event's [`EventTarget::take_error`], as when VRL runs.
    pub(super) fn run(
        &self,
        event: &mut dyn EventTarget,
        value_wanted: bool,
    ) -> Result<Value, ExpressionError> {
        self.run_boxed(event, value_wanted).map_err(|error| *error)
    }

    fn run_boxed(&self, event: &mut dyn EventTarget, value_wanted: bool) -> Result<Value, Failed> {
        let (last, first) = self
            .statements
            .split_last()
            .expect("a direct program has a statement");
        for statement in first {
            statement.run(event, false)?;
        }
        last.run(event, value_wanted)
    }
}

impl Statement {
    fn of(expr: Expr) -> Option<Statement> {
        let Expr::Assignment(assignment) = expr else {
            return Node::of(expr).map(Statement::Expr);
        };
        let ast::Assignment::Single {
            target,
            op: AssignmentOp::Assign,
            expr,
        } = assignment.into_inner()
        else {
            return None;
        };
        let path = match target.into_inner() {
            AssignmentTarget::External(Some(path)) if path.prefix == PathPrefix::Event => {
                path.path.segments
            }
            AssignmentTarget::Query(query) => query_path(query)?,
            _ => return None,
        };
        // `. = …` replaces the whole event: left to VRL.
        (!path.is_empty() && plain(&path))
            .then(|| Node::of(expr.into_inner()).map(|value| Statement::Assign(path, value)))
            .flatten()
    }

    /// Runs the statement; its value only when `wanted` (the program's last statement, when its
    /// caller uses the value).
    fn run(&self, event: &mut dyn EventTarget, wanted: bool) -> Result<Value, Failed> {
        let keep = |value: Cow<'_, Value>| {
            if wanted {
                value.into_owned()
            } else {
                Value::Null
            }
        };
        match self {
            Statement::Expr(node) => node.eval(&*event).map(keep),
            Statement::Assign(path, node) => {
                let value = node.eval(&*event)?.into_owned();
                let result = keep(Cow::Borrowed(&value));
                event.insert(path, value);
                Ok(result)
            }
        }
    }
}

/// Whether a path is only fields and indices (a coalescing segment, `.(a | b)`, is left to
/// VRL's own lookup).
fn plain(path: &[OwnedSegment]) -> bool {
    path.iter()
        .all(|s| matches!(s, OwnedSegment::Field(_) | OwnedSegment::Index(_)))
}

/// The event path a query reads, if it reads one.
fn query_path(query: ast::Query) -> Option<Vec<OwnedSegment>> {
    let QueryTarget::External(PathPrefix::Event) = query.target.into_inner() else {
        return None;
    };
    let path = query.path.into_inner().segments;
    plain(&path).then_some(path)
}

impl Node {
    fn of(expr: Expr) -> Option<Node> {
        let boxed = |expr: ast::Node<Expr>| Node::of(expr.into_inner()).map(Box::new);
        match expr {
            Expr::Query(query) => query_path(query.into_inner()).map(Node::Path),
            Expr::Literal(literal) => Some(Node::Literal(match literal.into_inner() {
                // `""` is a template of no segments.
                Literal::String(template) if template.0.is_empty() => Value::from(""),
                Literal::String(template) => Value::from(template.as_literal_string()?),
                Literal::RawString(s) => Value::from(s),
                Literal::Integer(i) => Value::Integer(i),
                Literal::Float(f) => Value::Float(f),
                Literal::Boolean(b) => Value::Boolean(b),
                Literal::Null => Value::Null,
                Literal::Regex(_) | Literal::Timestamp(_) => return None,
            })),
            Expr::Op(op) => {
                let ast::Op(lhs, opcode, rhs) = op.into_inner();
                let binary = match opcode.into_inner() {
                    Opcode::Err => return Some(Node::Coalesce(boxed(*lhs)?, boxed(*rhs)?)),
                    Opcode::Eq => Binary::Eq,
                    Opcode::Ne => Binary::Ne,
                    Opcode::Lt => Binary::Lt,
                    Opcode::Le => Binary::Le,
                    Opcode::Gt => Binary::Gt,
                    Opcode::Ge => Binary::Ge,
                    Opcode::Add => Binary::Add,
                    Opcode::Sub => Binary::Sub,
                    Opcode::Mul => Binary::Mul,
                    Opcode::Div => Binary::Div,
                    Opcode::And => Binary::And,
                    Opcode::Or => Binary::Or,
                    Opcode::Merge => return None,
                };
                Some(Node::Binary(binary, boxed(*lhs)?, boxed(*rhs)?))
            }
            Expr::Unary(unary) => match unary.into_inner() {
                Unary::Not(not) => Some(Node::Not(boxed(*not.into_inner().take().1)?)),
            },
            Expr::FunctionCall(call) => {
                let span = call.span();
                let call = call.into_inner();
                let name = call.ident.inner().as_ref();
                let (keyword, function) = match name {
                    "exists" => ("field", None),
                    _ => ("value", Some(ASSERTIONS.iter().position(|a| a.0 == name)?)),
                };
                if call.abort_on_error || call.closure.is_some() {
                    return None;
                }
                let [argument] = <[_; 1]>::try_from(call.arguments).ok()?;
                let argument = argument.into_inner();
                if argument
                    .ident
                    .is_some_and(|name| name.inner().as_ref() != keyword)
                {
                    return None;
                }
                let argument = Node::of(argument.expr.into_inner())?;
                match (function, argument) {
                    (None, Node::Path(path)) => Some(Node::Exists(path)),
                    (None, _) => None,
                    (Some(function), argument) => Some(Node::Assert(
                        Assertion {
                            function,
                            span: (span.start(), span.end()),
                        },
                        Box::new(argument),
                    )),
                }
            }
            Expr::Container(container) => match container.into_inner() {
                Container::Group(group) => {
                    Node::of((*group).into_inner().into_inner().into_inner())
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// The expression's value on `event`, borrowed where it is a literal or read from the event.
    fn eval<'s>(&'s self, event: &'s dyn EventTarget) -> Result<Cow<'s, Value>, Failed> {
        Ok(match self {
            Node::Path(path) => Cow::Borrowed(event.get(path).unwrap_or(&NULL)),
            Node::Literal(value) => Cow::Borrowed(value),
            Node::Exists(path) => Cow::Owned(Value::Boolean(event.get(path).is_some())),
            Node::Not(inner) => {
                let value = inner.eval(event)?;
                Cow::Owned(Value::Boolean(!match *value {
                    Value::Boolean(b) => b,
                    _ => value.into_owned().try_boolean().map_err(failed)?,
                }))
            }
            Node::Binary(op, lhs, rhs) => Cow::Owned(op.apply(lhs, rhs, event)?),
            Node::Coalesce(lhs, rhs) => match lhs.eval(event) {
                Ok(value) => value,
                Err(_) => rhs.eval(event)?,
            },
            Node::Assert(assertion, inner) => {
                let value = inner.eval(event).map_err(|error| assertion.wrap(*error))?;
                let (_, expected, holds) = ASSERTIONS[assertion.function];
                if !holds(&value) {
                    let message = format!("expected {expected}, got {}", value.kind());
                    return Err(assertion.wrap(ExpressionError::from(message)));
                }
                value
            }
        })
    }
}

impl Assertion {
    /// An error inside the call (its argument's or its own) as VRL's function call reports it:
    /// prefixed with the function and where the call is.
    fn wrap(&self, error: ExpressionError) -> Failed {
        match error {
            ExpressionError::Error {
                message,
                labels,
                notes,
            } => {
                let (start, end) = self.span;
                let function = ASSERTIONS[self.function].0;
                Box::new(ExpressionError::Error {
                    message: format!(
                        r#"function call error for "{function}" at ({start}:{end}): {message}"#
                    ),
                    labels,
                    notes,
                })
            }
            other => Box::new(other),
        }
    }
}

impl Binary {
    /// `lhs op rhs` as VRL's operator computes it (its order, short-circuits and arithmetic).
    fn apply(self, lhs: &Node, rhs: &Node, event: &dyn EventTarget) -> Result<Value, Failed> {
        if matches!(self, Binary::Eq | Binary::Ne)
            && let Some(equal) = text_equal(lhs, rhs, event)
        {
            return Ok(Value::Boolean(equal == (self == Binary::Eq)));
        }
        let l = lhs.eval(event)?;
        match self {
            Binary::And => {
                return match *l {
                    Value::Null | Value::Boolean(false) => Ok(Value::Boolean(false)),
                    _ => l
                        .into_owned()
                        .try_and(rhs.eval(event)?.into_owned())
                        .map_err(failed),
                };
            }
            Binary::Or => {
                return match *l {
                    Value::Null | Value::Boolean(false) => match rhs.eval(event) {
                        Ok(r) => Ok(r.into_owned()),
                        Err(error) => Err(failed(ValueError::Or(*error))),
                    },
                    _ => Ok(l.into_owned()),
                };
            }
            _ => {}
        }
        let r = rhs.eval(event)?;
        let (l, r) = match self {
            Binary::Eq => return Ok(Value::Boolean(l.eq_lossy(&r))),
            Binary::Ne => return Ok(Value::Boolean(!l.eq_lossy(&r))),
            _ => (l.into_owned(), r.into_owned()),
        };
        match self {
            Binary::Lt => l.try_lt(r),
            Binary::Le => l.try_le(r),
            Binary::Gt => l.try_gt(r),
            Binary::Ge => l.try_ge(r),
            Binary::Add => l.try_add(r),
            Binary::Sub => l.try_sub(r),
            Binary::Mul => l.try_mul(r),
            Binary::Div => l.try_div(r),
            Binary::Eq | Binary::Ne | Binary::And | Binary::Or => unreachable!("handled above"),
        }
        .map_err(failed)
    }
}

/// `lhs == rhs` for a path and a string literal, when the event can answer it without reading
/// the value (`eq_lossy` of two strings compares their bytes; reading a path has no effect a
/// string could have); `None` otherwise.
fn text_equal(lhs: &Node, rhs: &Node, event: &dyn EventTarget) -> Option<bool> {
    match (lhs, rhs) {
        (Node::Path(path), Node::Literal(literal)) | (Node::Literal(literal), Node::Path(path)) => {
            event.is_text(path, literal.as_bytes()?)
        }
        _ => None,
    }
}

/// VRL's error of a failed expression, boxed: results pass through every node of a program, and
/// the error is large while failures are rare (and mostly caught by `??`).
type Failed = Box<ExpressionError>;

fn failed(error: ValueError) -> Failed {
    Box::new(error.into())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::expr::{Expr, Filter, Remap, RunError, Runtime, StoredEvent};

    /// A compiled program of the subset both ways: evaluated directly, and through VRL's runtime.
    fn both_ways<K: Clone>(direct: Expr<K>, source: &str) -> [Expr<K>; 2] {
        assert!(direct.direct.is_some(), "{source} is in the subset");
        let mut through_vrl = direct.clone();
        through_vrl.direct = None;
        [direct, through_vrl]
    }

    /// Runs `source` on `record` (a JSON object) both ways — directly and through VRL's runtime —
    /// on the event as one VRL value (when VRL can read it as one) and as a stored record, and
    /// returns the one answer all of them give.
    fn check(source: &str, record: &str) -> Result<bool, RunError> {
        let filter = Filter::compile(source).unwrap_or_else(|e| panic!("{source}: {e:?}"));
        let mut rt = Runtime::new();
        let mut answers = Vec::new();
        for filter in &both_ways(filter, source) {
            if let Ok(mut value) = serde_json::from_str::<Value>(record) {
                answers.push(("value", filter.run(&mut rt, &mut value)));
            }
            let mut stored = StoredEvent::read(record.as_bytes()).expect("a valid stored event");
            answers.push(("stored", filter.run(&mut rt, &mut stored)));
        }
        let first = answers[0].1.clone();
        assert!(
            answers.iter().all(|(_, answer)| *answer == first),
            "{source} on {record}: {answers:?}"
        );
        first
    }

    /// An event whose attribute `x` has the JSON text `x`.
    fn event(x: &str) -> String {
        format!(
            r#"{{"specversion":"1.0","id":"1","source":"/s","type":"a","x":{x},"data":{{"y":"a","n":2}}}}"#
        )
    }

    #[test]
    fn comparisons_with_literals_are_evaluated_directly() {
        assert_eq!(
            check(r#".type != "debug.ping""#, &event(r#""a""#)),
            Ok(true)
        );
        assert_eq!(check(r#".type == "a""#, &event(r#""a""#)), Ok(true));
        assert_eq!(check(r#""a" == .data.y"#, &event(r#""a""#)), Ok(true));
        assert_eq!(check(".data.n == 2.0", &event(r#""a""#)), Ok(true));
        assert_eq!(check(".missing == null", &event(r#""a""#)), Ok(true));
        assert_eq!(check(".x == s'a'", &event(r#""a""#)), Ok(true));
        assert_eq!(check(".x[0] == 1", &event("[1]")), Ok(true));
        assert_eq!(
            check(
                r#".x == "a" && !(.data.y == "b" || .type == "b")"#,
                &event(r#""a""#)
            ),
            Ok(true)
        );
        assert_eq!(check(".x == 1", &event(r#""1""#)), Ok(false));
        assert_eq!(
            check("exists(.data.y) && !exists(.nope)", &event("1")),
            Ok(true)
        );
        assert_eq!(check("exists(field: .x[0])", &event("[null]")), Ok(true));
    }

    #[test]
    fn a_value_vrl_cannot_represent_fails_the_run_as_through_vrl() {
        let Err(RunError::Failed(message)) = check(".x == 1", &event("1e400")) else {
            panic!("a number beyond f64 fails the run");
        };
        assert!(message.contains("`x`"), "{message}");
    }

    #[test]
    fn programs_outside_the_subset_are_left_to_vrl() {
        for source in [
            r#"starts_with(.type, "a.")"#,
            r#"x = .type; x == "a""#,
            r#"%m == "a""#,
            r#".type == "{{ .source }}""#,
            r#".(a | b) == "a""#,
            "exists(%m)",
            "is_string(.x)",
            "int!(.x)",
            "int(.x, 1) ?? 0",
            "int(other: .x) ?? 0",
            ". = {}",
            ".x |= {}",
            ".x = .y = 1",
            "if .x == 1 { .y = 2 }",
            r#".x = [1]"#,
            r#"abort"#,
            ".x = 1\n.y = to_int(.z) ?? 0",
        ] {
            assert_eq!(Direct::of(source), None, "{source}");
        }
    }

    /// Runs the remap `source` on `record` both ways, on the event as one VRL value (when VRL
    /// can read it as one) and as a stored record, and returns the one outcome all of them give:
    /// the run's result and the event written afterwards. `None` when VRL does not compile it.
    fn check_remap(source: &str, record: &str) -> Option<(Result<(), RunError>, String)> {
        let remap = Remap::compile(source).ok()?;
        let mut rt = Runtime::new();
        let mut outcomes = Vec::new();
        for remap in &both_ways(remap, source) {
            if let Ok(mut value) = serde_json::from_str::<Value>(record) {
                let result = remap.run(&mut rt, &mut value);
                let written = serde_json::to_string(&value).expect("a value serializes");
                outcomes.push(("value", result, written));
            }
            let mut stored = StoredEvent::read(record.as_bytes()).expect("a valid stored event");
            let result = remap.run(&mut rt, &mut stored);
            let mut out = Vec::new();
            let written = match stored.to_json_bytes(&mut out) {
                Ok(()) => String::from_utf8(out).expect("JSON is UTF-8"),
                Err(invalid) => format!("invalid: {}", invalid.message),
            };
            outcomes.push(("stored", result, written));
        }
        let by_kind = |kind: &str| {
            outcomes
                .iter()
                .filter(|o| o.0 == kind)
                .map(|o| (o.1.clone(), o.2.clone()))
                .collect::<Vec<_>>()
        };
        for kind in ["value", "stored"] {
            let both = by_kind(kind);
            assert!(
                both.windows(2).all(|w| w[0] == w[1]),
                "{source} on {record} ({kind}, direct first): {both:?}"
            );
        }
        let stored = by_kind("stored").swap_remove(0);
        Some((stored.0.map(drop), stored.1))
    }

    #[test]
    fn remaps_of_the_subset_run_directly() {
        let record = event("3");
        let (result, written) = check_remap(
            ".data.total = (int(.data.n) ?? 0) * (int(.x) ?? 1)",
            &record,
        )
        .unwrap();
        assert_eq!(result, Ok(()));
        assert!(
            written.ends_with(r#""data":{"y":"a","n":2,"total":6}}"#),
            "{written}"
        );
        let (_, written) = check_remap(
            ".data.total = (int(.data.y) ?? 0) * 2\n.new = string(.data.y) ?? \"\"; .x = .x + 1 ?? null",
            &record,
        )
        .unwrap();
        assert!(written.contains(r#""x":4"#), "{written}");
        assert!(written.contains(r#""new":"a""#), "{written}");
        assert!(written.contains(r#""total":0"#), "{written}");
        let (_, written) =
            check_remap(".data.half = .x / 2 ?? 0; .flag = .data.half > 1", &record).unwrap();
        assert!(written.contains(r#""half":1.5"#), "{written}");
        assert!(written.contains(r#""flag":true"#), "{written}");
        // An error inside a call's argument is reported as the call's, as VRL does.
        let (result, _) = check_remap(".new = bool(true && .type)", &record).unwrap();
        let Err(RunError::Failed(message)) = result else {
            panic!("`&&` on a string fails: {result:?}");
        };
        assert!(
            message.starts_with(r#"function call error for "bool""#),
            "{message}"
        );
        let (_, written) = check_remap(
            ".data.a = .data.n >= 2 ?? false; .data.b = .data.n <= 2 ?? false\n\
             .data.c = .data.n > 2 ?? true; .data.d = .data.n < 2 ?? true",
            &record,
        )
        .unwrap();
        assert!(
            written.ends_with(r#""a":true,"b":true,"c":false,"d":false}}"#),
            "{written}"
        );
    }

    #[test]
    fn a_value_a_remap_cannot_read_fails_the_run_as_through_vrl() {
        let (result, _) = check_remap(".y = int(.x) ?? 0", &event("1e400")).unwrap();
        let Err(RunError::Failed(message)) = result else {
            panic!("a number beyond f64 fails the run: {result:?}");
        };
        assert!(message.contains("`x`"), "{message}");
    }

    /// A condition of the subset, as source: comparisons of paths and literals of every kind and
    /// `exists`, combined up to a few levels deep.
    fn condition() -> impl Strategy<Value = String> {
        let operand = proptest::sample::select(
            &[
                ".type", ".x", ".x.y", ".x[0]", ".data.y", ".data.n", ".nope", r#""a""#, r#""b""#,
                "s'a'", "1", "2", "1.0", "true", "null",
            ][..],
        );
        let comparison = (operand.clone(), prop_oneof!["==", "!="], operand)
            .prop_map(|(l, op, r)| format!("{l} {op} {r}"));
        let exists = proptest::sample::select(&[".x", ".x.y", ".x[0]", ".data.y", ".nope"][..])
            .prop_map(|path| format!("exists({path})"));
        prop_oneof![3 => comparison, 1 => exists].prop_recursive(3, 12, 2, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) && ({b})")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} || {b}")),
                inner.prop_map(|a| format!("!({a})")),
            ]
        })
    }

    fn x() -> impl Strategy<Value = &'static str> {
        proptest::sample::select(
            &[
                r#""a""#,
                r#""b""#,
                "1",
                "1.0",
                "2",
                "true",
                "false",
                "null",
                r#"{"y":"a"}"#,
                r#"{"y":1}"#,
                r#"["a"]"#,
                "[1]",
                r#""\u0061""#,
                "1e400",
            ][..],
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn a_direct_condition_answers_as_vrl_does(source in condition(), x in x()) {
            check(&source, &event(x)).ok();
        }
    }

    /// A remap of the subset, as source: one or two assignments of expressions built from
    /// paths, literals, operators, `??` and type assertions, each fallible part handled as VRL
    /// demands (programs VRL rejects anyway are skipped by the test).
    fn remap() -> impl Strategy<Value = String> {
        // Numbers weigh more: arithmetic on them is what remaps mostly do.
        let atom = prop_oneof![
            2 => proptest::sample::select(&[".x", ".data.n", "1", "2", "0", "-3", "1.5", "0.0"][..]),
            1 => proptest::sample::select(
                &[".x.y", ".x[0]", ".data.y", ".nope", ".type", r#""a""#, r#""b""#, "true", "false", "null"][..],
            ),
        ]
        .prop_map(str::to_owned);
        let fallback = proptest::sample::select(&["0", "1", r#""d""#, "false", "null"][..]);
        // `??` where the left side can fail; VRL rejects it where it cannot (E651), so the
        // fallback is added or not at random and about half of each kind compiles.
        let handled = (any::<bool>(), fallback).prop_map(|(wrap, d)| wrap.then_some(d));
        let handle = |e: String, d: Option<&str>| match d {
            Some(d) => format!("({e} ?? {d})"),
            None => format!("({e})"),
        };
        let expr = atom.prop_recursive(3, 12, 2, move |inner| {
            prop_oneof![
                2 => (
                    proptest::sample::select(&["int", "float", "string", "bool", "object"][..]),
                    inner.clone(),
                    handled.clone()
                )
                    .prop_map(move |(f, a, d)| handle(format!("{f}({a})"), d)),
                1 => (inner.clone(), prop_oneof!["==", "!="], inner.clone())
                    .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
                4 => (
                    inner.clone(),
                    proptest::sample::select(&["<", "<=", ">", ">=", "+", "-", "*", "/", "&&", "||"][..]),
                    inner.clone(),
                    handled.clone()
                )
                    .prop_map(move |(a, op, b, d)| handle(format!("{a} {op} {b}"), d)),
                1 => (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("(!({a} == {b}))")),
                1 => proptest::sample::select(&[".x", ".data.y", ".nope"][..])
                    .prop_map(|p| format!("exists({p})")),
            ]
        });
        let target = proptest::sample::select(
            &[
                ".data.total",
                ".x",
                ".data.y",
                ".new",
                ".new.deep",
                ".x[1]",
                ".type",
                ".data",
            ][..],
        );
        proptest::collection::vec((target, expr), 1..=2).prop_map(|statements| {
            statements
                .iter()
                .map(|(target, expr)| format!("{target} = {expr}"))
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    #[test]
    fn a_direct_remap_runs_as_vrl_does() {
        use proptest::test_runner::{Config, TestRunner};
        use std::cell::Cell;
        let compiled = Cell::new(0);
        // Shrunk failures are printed; a seed file needs the `proptest!` macro's source path.
        let config = Config {
            failure_persistence: None,
            ..Config::with_cases(2000)
        };
        let mut runner = TestRunner::new(config);
        runner
            .run(&(remap(), x()), |(source, x)| {
                if check_remap(&source, &event(x)).is_some() {
                    compiled.set(compiled.get() + 1);
                }
                Ok(())
            })
            .unwrap();
        // The generator is only useful while VRL accepts most of what it writes.
        assert!(
            compiled.get() >= 600,
            "only {} of 2000 compiled",
            compiled.get()
        );
    }
}
