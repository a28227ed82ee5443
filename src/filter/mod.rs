//! The `where` expressions of pipeline stages: `fit != 'weak' and score >= 7` parsed once into a
//! [`Filter`], then asked of each record of an earlier stage whether it passes.
//!
//! The language is a small, SQL-like one (`docs/pipelines.md`, "Filters"): `or`, `and`, `not`,
//! comparisons, `in`, `is null`, with SQL's three-valued logic. A row passes only when the
//! expression is TRUE, so a comparison with a missing column or a JSON null (unknown) fails
//! whether or not it sits under a `not`. Its tokens are `filter::lex`'s and its grammar
//! `filter::parse`'s; here are the expression tree and its evaluation over a record. Where the
//! records come from, and which columns a stage may name, are the stages' business: this module
//! does no I/O.

mod lex;
mod parse;

use std::cmp::Ordering;

use serde_json::{Map, Value};

/// A parsed `where` expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    text: String,
    expr: Expr,
}

/// Why a `where` expression does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at character {position} of `{text}`)")]
pub struct FilterError {
    /// The expression, trimmed (as [`Filter::text`]).
    pub text: String,
    /// Where in `text` the problem is, counted in characters from 1; one past the last
    /// character when the expression ends too early.
    pub position: usize,
    pub message: String,
}

impl FilterError {
    /// The error at character `at` of `text`, counted from 0.
    fn at(text: &str, at: usize, message: String) -> FilterError {
        FilterError {
            text: text.to_owned(),
            position: at + 1,
            message,
        }
    }
}

impl Filter {
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let text = text.trim();
        let expr = parse::parse(text)?;
        Ok(Filter {
            text: text.to_owned(),
            expr,
        })
    }

    /// Every column name the expression reads, in order of first use, each once.
    pub fn columns(&self) -> Vec<&str> {
        let mut names = Vec::new();
        self.expr.columns(&mut names);
        names
    }

    /// Whether a record passes: SQL three-valued logic, and a row passes only when the
    /// expression is TRUE (unknown, e.g. a comparison with null or a missing column, fails).
    pub fn matches(&self, record: &Map<String, Value>) -> bool {
        self.expr.eval(record) == Some(true)
    }

    /// The expression as written (trimmed), for messages and fingerprints.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// The expression tree. `and` and `or` hold their operands in a list, so that a long chain of
/// `or`s is no deeper than one: only parentheses and `not` nest, and the parser bounds those.
#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Compare {
        left: Operand,
        op: CompareOp,
        right: Operand,
    },
    /// `operand in (…)`, or `not in` when `negated`.
    In {
        operand: Operand,
        list: Vec<Literal>,
        negated: bool,
    },
    /// `operand is null`, or `is not null` when `negated`.
    IsNull {
        operand: Operand,
        negated: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    /// The key of the record: `score`, `screen.reason` or a quoted `"my col"`, as written.
    Column(String),
    Literal(Literal),
}

#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Null,
    Bool(bool),
    Number(Num),
    String(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CompareOp {
    fn holds(self, order: Ordering) -> bool {
        match self {
            CompareOp::Eq => order.is_eq(),
            CompareOp::Ne => order.is_ne(),
            CompareOp::Lt => order.is_lt(),
            CompareOp::Le => order.is_le(),
            CompareOp::Gt => order.is_gt(),
            CompareOp::Ge => order.is_ge(),
        }
    }
}

/// A number, integers kept exact: JSON integers beyond 2^53 (ids, counts) compare correctly
/// with each other, and an integer against a decimal compares by value (`7 = 7.0`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Int(i128),
    /// Never NaN: JSON has none and the parser reads only digits.
    Float(f64),
}

impl Num {
    fn from_json(number: &serde_json::Number) -> Option<Num> {
        match number.as_i128() {
            Some(int) => Some(Num::Int(int)),
            None => number.as_f64().map(Num::Float),
        }
    }

    fn compare(self, other: Num) -> Option<Ordering> {
        match (self, other) {
            (Num::Int(left), Num::Int(right)) => Some(left.cmp(&right)),
            (Num::Float(left), Num::Float(right)) => left.partial_cmp(&right),
            (Num::Int(left), Num::Float(right)) => int_against_float(left, right),
            (Num::Float(left), Num::Int(right)) => {
                int_against_float(right, left).map(Ordering::reverse)
            }
        }
    }
}

/// `int` against `float` without rounding `int` to a float (which would make 2^53 + 1 equal
/// to 2^53): the float's integer part is compared as an integer, then its fraction decides.
fn int_against_float(int: i128, float: f64) -> Option<Ordering> {
    // 2^127: every float below it and at or above -2^127 truncates to an i128.
    const BOUND: f64 = 170_141_183_460_469_231_731_687_303_715_884_105_728.0;
    if float.is_nan() {
        return None;
    }
    if float >= BOUND {
        return Some(Ordering::Less);
    }
    if float < -BOUND {
        return Some(Ordering::Greater);
    }
    let whole = float.trunc();
    // In range by the checks above, so the cast is exact.
    let order = int.cmp(&(whole as i128));
    Some(order.then_with(|| 0.0.partial_cmp(&(float - whole)).unwrap_or(Ordering::Equal)))
}

/// A value as the comparisons see it.
#[derive(Debug, Clone, Copy)]
enum Scalar<'a> {
    Null,
    Bool(bool),
    Num(Num),
    Str(&'a str),
    /// An array, an object, or a number beyond f64's range: not null, but comparable to nothing.
    Other,
}

impl Scalar<'_> {
    /// SQL's order of two values: numbers by value, strings by code point (no collation), bools
    /// with `false < true`; None (unknown) for a null or two values of different kinds.
    fn compare(self, other: Scalar<'_>) -> Option<Ordering> {
        match (self, other) {
            (Scalar::Bool(left), Scalar::Bool(right)) => Some(left.cmp(&right)),
            (Scalar::Num(left), Scalar::Num(right)) => left.compare(right),
            (Scalar::Str(left), Scalar::Str(right)) => Some(left.cmp(right)),
            _ => None,
        }
    }
}

impl Literal {
    fn scalar(&self) -> Scalar<'_> {
        match self {
            Literal::Null => Scalar::Null,
            Literal::Bool(value) => Scalar::Bool(*value),
            Literal::Number(number) => Scalar::Num(*number),
            Literal::String(text) => Scalar::Str(text),
        }
    }
}

impl Operand {
    fn scalar<'a>(&'a self, record: &'a Map<String, Value>) -> Scalar<'a> {
        match self {
            Operand::Literal(literal) => literal.scalar(),
            Operand::Column(name) => match record.get(name) {
                None | Some(Value::Null) => Scalar::Null,
                Some(Value::Bool(value)) => Scalar::Bool(*value),
                Some(Value::Number(number)) => {
                    Num::from_json(number).map_or(Scalar::Other, Scalar::Num)
                }
                Some(Value::String(text)) => Scalar::Str(text),
                Some(Value::Array(_) | Value::Object(_)) => Scalar::Other,
            },
        }
    }

    fn column(&self) -> Option<&str> {
        match self {
            Operand::Column(name) => Some(name),
            Operand::Literal(_) => None,
        }
    }
}

impl Expr {
    /// TRUE, FALSE or unknown (None), by SQL's rules.
    fn eval(&self, record: &Map<String, Value>) -> Option<bool> {
        match self {
            Expr::Or(items) => {
                let mut result = Some(false);
                for item in items {
                    match item.eval(record) {
                        Some(true) => return Some(true),
                        Some(false) => {}
                        None => result = None,
                    }
                }
                result
            }
            Expr::And(items) => {
                let mut result = Some(true);
                for item in items {
                    match item.eval(record) {
                        Some(false) => return Some(false),
                        Some(true) => {}
                        None => result = None,
                    }
                }
                result
            }
            Expr::Not(inner) => inner.eval(record).map(|value| !value),
            Expr::Compare { left, op, right } => left
                .scalar(record)
                .compare(right.scalar(record))
                .map(|order| op.holds(order)),
            Expr::In {
                operand,
                list,
                negated,
            } => {
                let value = operand.scalar(record);
                // TRUE when a member is equal; otherwise unknown when some member could not be
                // compared (a null, another kind), else FALSE.
                let mut result = Some(false);
                for member in list {
                    match value.compare(member.scalar()) {
                        Some(Ordering::Equal) => {
                            result = Some(true);
                            break;
                        }
                        Some(_) => {}
                        None => result = None,
                    }
                }
                result.map(|found| found != *negated)
            }
            Expr::IsNull { operand, negated } => {
                let null = matches!(operand.scalar(record), Scalar::Null);
                Some(null != *negated)
            }
        }
    }

    fn columns<'a>(&'a self, names: &mut Vec<&'a str>) {
        let mut add = |operand: &'a Operand| {
            if let Some(name) = operand.column()
                && !names.contains(&name)
            {
                names.push(name);
            }
        };
        match self {
            Expr::Or(items) | Expr::And(items) => {
                for item in items {
                    item.columns(names);
                }
            }
            Expr::Not(inner) => inner.columns(names),
            Expr::Compare { left, right, .. } => {
                add(left);
                add(right);
            }
            Expr::In { operand, .. } | Expr::IsNull { operand, .. } => add(operand),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("a record is an object, not {other}"),
        }
    }

    fn passes(expression: &str, value: Value) -> bool {
        let filter = Filter::parse(expression).expect("the test's expression parses");
        filter.matches(&record(value))
    }

    #[test]
    fn and_binds_tighter_than_or() {
        // a or (b and c): true by a alone.
        assert!(passes(
            "a = 1 or b = 1 and c = 1",
            json!({"a": 1, "b": 0, "c": 0})
        ));
        // Not (a or b) and c.
        assert!(passes(
            "c = 1 and a = 1 or b = 1",
            json!({"a": 0, "b": 1, "c": 0})
        ));
        assert!(!passes(
            "(a = 1 or b = 1) and c = 1",
            json!({"a": 1, "b": 0, "c": 0})
        ));
        assert!(passes("A = 1 OR b = 1 AnD c = 1", json!({"A": 1})));
    }

    #[test]
    fn not_binds_tighter_than_and_and_looser_than_a_comparison() {
        assert!(passes("not a = 1 and b = 1", json!({"a": 2, "b": 1})));
        assert!(!passes("not (a = 1 and b = 1)", json!({"a": 1, "b": 1})));
        assert!(passes("not not a = 1", json!({"a": 1})));
        assert!(passes("NOT a = 2", json!({"a": 1})));
    }

    #[test]
    fn unknown_fails_even_under_not() {
        for row in [json!({}), json!({"x": null}), json!({"x": "1"})] {
            assert!(!passes("x = 1", row.clone()), "{row}");
            assert!(!passes("not (x = 1)", row.clone()), "{row}");
            assert!(!passes("x != 1", row.clone()), "{row}");
        }
        // Unknown or TRUE is TRUE; unknown and FALSE is FALSE, so its `not` passes.
        assert!(passes("x = 1 or y = 2", json!({"y": 2})));
        assert!(!passes("x = 1 and y = 2", json!({"y": 2})));
        assert!(passes("not (x = 1 and y = 2)", json!({"y": 3})));
        assert!(!passes("not (x = 1 and y = 2)", json!({"y": 2})));
    }

    #[test]
    fn is_null_sees_missing_keys_and_json_nulls() {
        assert!(passes("x is null", json!({})));
        assert!(passes("x IS NULL", json!({"x": null})));
        assert!(!passes("x is null", json!({"x": 0})));
        assert!(passes("x is not null", json!({"x": ""})));
        assert!(passes("x is not null", json!({"x": [1]})));
        assert!(!passes("x is not null", json!({})));
        assert!(passes("not x is null", json!({"x": false})));
    }

    #[test]
    fn in_and_not_in_follow_sql_with_nulls() {
        let fit = |value: Value| json!({ "fit": value });
        assert!(passes(
            "fit in ('strong', 'possible')",
            fit(json!("strong"))
        ));
        assert!(!passes("fit in ('strong', 'possible')", fit(json!("weak"))));
        assert!(passes("fit not in ('weak')", fit(json!("strong"))));
        assert!(!passes("fit not in ('weak')", fit(json!("weak"))));
        assert!(!passes("fit not in ('weak')", json!({})));
        assert!(!passes("fit in ('weak')", json!({})));
        // A null member: a match is still TRUE, no match is unknown, so `not in` never passes.
        assert!(passes("fit in ('weak', null)", fit(json!("weak"))));
        assert!(!passes("fit in ('strong', null)", fit(json!("weak"))));
        assert!(!passes("fit not in ('strong', null)", fit(json!("weak"))));
        assert!(passes("n in (1, 2.5, 3)", json!({"n": 2.5})));
        assert!(passes("n not in (1, 3)", json!({"n": 2})));
    }

    #[test]
    fn numbers_compare_by_value_across_integers_and_decimals() {
        assert!(passes("score >= 7", json!({"score": 7.0})));
        assert!(passes("score = 7.0", json!({"score": 7})));
        assert!(passes("score > 6.5", json!({"score": 7})));
        assert!(!passes("score > 7.5", json!({"score": 7})));
        assert!(passes("score < -0.5", json!({"score": -1})));
        assert!(passes("score <= -1", json!({"score": -1.0})));
        assert!(passes("score <> 7", json!({"score": 7.25})));
        assert!(passes("score == 7", json!({"score": 7})));
        let huge = "{\"id\": 9007199254740993}";
        let row: Map<String, Value> = serde_json::from_str(huge).expect("valid JSON");
        let filter = |text: &str| Filter::parse(text).expect("parses").matches(&row);
        assert!(filter("id = 9007199254740993"));
        assert!(!filter("id = 9007199254740992"));
        assert!(filter("id > 9007199254740992.0"));
        assert!(!filter("id > 100000000000000000000000000000000000000000.5"));
        assert!(filter("id < 100000000000000000000000000000000000000000.5"));
        assert!(!filter("a = b"));
    }

    #[test]
    fn strings_compare_by_code_point_and_never_with_numbers() {
        assert!(passes("fit = 'weak'", json!({"fit": "weak"})));
        assert!(!passes("fit = 'Weak'", json!({"fit": "weak"})));
        assert!(passes("name < 'b'", json!({"name": "abc"})));
        assert!(passes("name > 'Z'", json!({"name": "a"})));
        assert!(passes("quote = 'it''s'", json!({"quote": "it's"})));
        assert!(!passes("n = '7'", json!({"n": 7})));
        assert!(!passes("n != '7'", json!({"n": 7})));
        assert!(!passes("list = 'a'", json!({"list": ["a"]})));
    }

    #[test]
    fn bools_are_ordered_false_before_true() {
        assert!(passes("ok = true", json!({"ok": true})));
        assert!(passes("ok != TRUE", json!({"ok": false})));
        assert!(passes("ok < true", json!({"ok": false})));
        assert!(!passes("ok = 1", json!({"ok": true})));
    }

    #[test]
    fn columns_compare_with_columns_and_names_are_keys_as_written() {
        assert!(passes("a < b", json!({"a": 1, "b": 2})));
        assert!(passes("7 <= score", json!({"score": 7})));
        assert!(passes(
            "screen.reason = 'ok'",
            json!({"screen.reason": "ok", "reason": "no"})
        ));
        assert!(passes("\"my col\" = 1", json!({"my col": 1})));
        assert!(passes("\"say \"\"hi\"\"\" = 1", json!({"say \"hi\"": 1})));
        assert!(passes("\"null\" is not null", json!({"null": 1})));
    }

    #[test]
    fn columns_are_listed_in_order_of_first_use_once_each() {
        let filter = Filter::parse(
            "(score >= 7 or screen.fit in ('a')) and not score < b and \"x y\" is null and 1 = 1",
        )
        .expect("parses");
        assert_eq!(filter.columns(), ["score", "screen.fit", "b", "x y"]);
        assert_eq!(
            Filter::parse("1 = 1").expect("parses").columns(),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn the_text_is_kept_trimmed() {
        let filter = Filter::parse("  \n score >= 7 \t").expect("parses");
        assert_eq!(filter.text(), "score >= 7");
    }

    #[test]
    fn integers_and_floats_compare_exactly_at_the_edges() {
        let big = 1i128 << 53;
        assert_eq!(
            int_against_float(big + 1, big as f64),
            Some(Ordering::Greater)
        );
        assert_eq!(int_against_float(big, big as f64), Some(Ordering::Equal));
        assert_eq!(int_against_float(-3, -3.5), Some(Ordering::Greater));
        assert_eq!(int_against_float(3, 3.5), Some(Ordering::Less));
        assert_eq!(int_against_float(i128::MAX, f64::MAX), Some(Ordering::Less));
        assert_eq!(
            int_against_float(i128::MIN, -f64::MAX),
            Some(Ordering::Greater)
        );
        assert_eq!(int_against_float(0, f64::INFINITY), Some(Ordering::Less));
        assert_eq!(int_against_float(0, f64::NAN), None);
    }
}
