//! Filter conditions evaluated without VRL's runtime ([`Condition`]).
//!
//! Most filters and route conditions are comparisons of event attributes with constants
//! (`.type != "debug.ping"`, `.data.region == "eu" && !(.source == "/test")`). For those, VRL's
//! runtime costs more than the comparison: a run clears its state, resolves the expression tree
//! through dynamic calls, clones the attribute out of the event and builds a boolean value. A
//! condition in that subset is also kept as a [`Condition`] and evaluated directly on the event.
//!
//! The subset: `==` and `!=` between event paths (`.a.b`, `.items[0]`) and literals (strings
//! without templates, raw strings, integers, floats, booleans, `null`), and `exists(.path)`,
//! combined with `&&`, `||`, `!` and parentheses. Anything else (other function calls,
//! variables, metadata, `??`, ordering comparisons, regexes) leaves the condition to VRL alone.
//!
//! Why it is the same condition: the program is still compiled by VRL first (so every check and
//! diagnostic is VRL's), a comparison uses VRL's own equality (`eq_lossy`, what its `==` calls)
//! on the value VRL's query would read (the event's [`EventTarget::get`], `null` when missing),
//! `exists` asks the event for the path as VRL's `exists` does, and `&&`/`||` short-circuit as
//! VRL's do. A property test runs both on the same events.

use vrl::compiler::value::VrlValueArithmetic;
use vrl::parser::ast::{self, Container, Expr, Literal, Opcode, QueryTarget, RootExpr, Unary};
use vrl::path::{OwnedSegment, PathPrefix};
use vrl::value::Value;

use super::EventTarget;

/// A condition in the subset the module documentation describes.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Condition {
    /// `lhs == rhs`, or `lhs != rhs` when `negated`.
    Equal {
        lhs: Operand,
        rhs: Operand,
        negated: bool,
    },
    /// `exists(.path)`: whether the event has a value at the path.
    Exists(Vec<OwnedSegment>),
    And(Box<Condition>, Box<Condition>),
    Or(Box<Condition>, Box<Condition>),
    Not(Box<Condition>),
}

/// One side of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Operand {
    /// The event's value at this path (`null` when there is none).
    Path(Vec<OwnedSegment>),
    Literal(Value),
}

impl Condition {
    /// The condition `source` as a [`Condition`], if it is one program of the subset. `source`
    /// must already have compiled as a VRL filter.
    pub(super) fn of(source: &str) -> Option<Condition> {
        let program = vrl::parser::parse(source).ok()?;
        let [root] = <[_; 1]>::try_from(program.0).ok()?;
        match root.into_inner() {
            RootExpr::Expr(expr) => Condition::of_expr(expr.into_inner()),
            RootExpr::Error(_) => None,
        }
    }

    fn of_expr(expr: Expr) -> Option<Condition> {
        match expr {
            Expr::Op(op) => {
                let ast::Op(lhs, opcode, rhs) = op.into_inner();
                let (lhs, rhs) = (lhs.into_inner(), rhs.into_inner());
                match opcode.into_inner() {
                    code @ (Opcode::Eq | Opcode::Ne) => Some(Condition::Equal {
                        lhs: Operand::of(lhs)?,
                        rhs: Operand::of(rhs)?,
                        negated: code == Opcode::Ne,
                    }),
                    Opcode::And => Some(Condition::And(
                        Box::new(Condition::of_expr(lhs)?),
                        Box::new(Condition::of_expr(rhs)?),
                    )),
                    Opcode::Or => Some(Condition::Or(
                        Box::new(Condition::of_expr(lhs)?),
                        Box::new(Condition::of_expr(rhs)?),
                    )),
                    _ => None,
                }
            }
            Expr::Unary(unary) => match unary.into_inner() {
                Unary::Not(not) => {
                    let (_, inner) = not.into_inner().take();
                    Some(Condition::Not(Box::new(Condition::of_expr(
                        inner.into_inner(),
                    )?)))
                }
            },
            Expr::FunctionCall(call) => {
                let call = call.into_inner();
                if call.ident.inner().as_ref() != "exists"
                    || call.abort_on_error
                    || call.closure.is_some()
                {
                    return None;
                }
                let [argument] = <[_; 1]>::try_from(call.arguments).ok()?;
                let argument = argument.into_inner();
                if argument
                    .ident
                    .is_some_and(|name| name.inner().as_ref() != "field")
                {
                    return None;
                }
                match Operand::of(argument.expr.into_inner())? {
                    Operand::Path(path) => Some(Condition::Exists(path)),
                    Operand::Literal(_) => None,
                }
            }
            Expr::Container(container) => match container.into_inner() {
                Container::Group(group) => {
                    Condition::of_expr((*group).into_inner().into_inner().into_inner())
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether `event` passes. A value the event cannot give VRL is reported by the event's
    /// [`EventTarget::take_error`], as when VRL runs.
    pub(super) fn eval(&self, event: &dyn EventTarget) -> bool {
        match self {
            Condition::Equal { lhs, rhs, negated } => {
                lhs.with_value(event, |l| rhs.with_value(event, |r| l.eq_lossy(r))) != *negated
            }
            Condition::Exists(path) => event.get(path).is_some(),
            Condition::And(a, b) => a.eval(event) && b.eval(event),
            Condition::Or(a, b) => a.eval(event) || b.eval(event),
            Condition::Not(a) => !a.eval(event),
        }
    }
}

impl Operand {
    fn of(expr: Expr) -> Option<Operand> {
        match expr {
            Expr::Query(query) => {
                let query = query.into_inner();
                let QueryTarget::External(PathPrefix::Event) = query.target.into_inner() else {
                    return None;
                };
                let path = query.path.into_inner().segments;
                // A coalescing segment (`.(a | b)`) is left to VRL's own lookup.
                path.iter()
                    .all(|s| matches!(s, OwnedSegment::Field(_) | OwnedSegment::Index(_)))
                    .then_some(Operand::Path(path))
            }
            Expr::Literal(literal) => Some(Operand::Literal(match literal.into_inner() {
                Literal::String(template) => Value::from(template.as_literal_string()?),
                Literal::RawString(s) => Value::from(s),
                Literal::Integer(i) => Value::Integer(i),
                Literal::Float(f) => Value::Float(f),
                Literal::Boolean(b) => Value::Boolean(b),
                Literal::Null => Value::Null,
                Literal::Regex(_) | Literal::Timestamp(_) => return None,
            })),
            _ => None,
        }
    }

    fn with_value<R>(&self, event: &dyn EventTarget, f: impl FnOnce(&Value) -> R) -> R {
        match self {
            Operand::Path(path) => f(event.get(path).unwrap_or(&Value::Null)),
            Operand::Literal(value) => f(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::expr::{Filter, RunError, Runtime, StoredEvent};

    /// Runs `source` on `record` (a JSON object) both ways — directly and through VRL's runtime —
    /// on the event as one VRL value (when VRL can read it as one) and as a stored record, and
    /// returns the one answer all of them give.
    fn check(source: &str, record: &str) -> Result<bool, RunError> {
        let direct = Filter::compile(source).unwrap_or_else(|e| panic!("{source}: {e:?}"));
        assert!(direct.condition.is_some(), "{source} is in the subset");
        let mut through_vrl = direct.clone();
        through_vrl.condition = None;
        let mut rt = Runtime::new();
        let mut answers = Vec::new();
        for filter in [&direct, &through_vrl] {
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
    fn conditions_outside_the_subset_are_left_to_vrl() {
        for source in [
            r#"starts_with(.type, "a.")"#,
            r#".type == "a" ?? false"#,
            "true",
            r#"x = .type; x == "a""#,
            r#"%m == "a""#,
            ".data.n > 1 ?? false",
            r#".type == "{{ .source }}""#,
            r#".(a | b) == "a""#,
            "exists(%m)",
            "is_string(.x)",
        ] {
            assert_eq!(Condition::of(source), None, "{source}");
        }
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
}
