//! The tokens of a `where` expression (`filter::lex`) into its tree: a recursive descent over
//! `or` < `and` < `not` < comparison. Every error names its character and what was expected.
//!
//! Nesting (parentheses, `not`) is bounded, so that no input can exhaust the stack, here or in
//! the evaluation and drop of the tree.

use super::lex::{Keyword, Lexeme, Token, lex};
use super::{Expr, FilterError, Literal, Operand};

/// More nested parentheses and `not`s than any hand-written filter needs.
const MAX_DEPTH: usize = 64;

/// The tree of `text` (already trimmed).
pub(super) fn parse(text: &str) -> Result<Expr, FilterError> {
    if text.is_empty() {
        return Err(FilterError::at(text, 0, "empty expression".into()));
    }
    let tokens = lex(text)?;
    let mut parser = Parser {
        text,
        tokens,
        next: 0,
        end: text.chars().count(),
        depth: 0,
    };
    let expr = parser.or()?;
    if parser.peek().is_some() {
        return Err(parser.expected("`and`, `or` or the end of the expression"));
    }
    Ok(expr)
}

struct Parser<'t> {
    text: &'t str,
    tokens: Vec<Lexeme>,
    next: usize,
    /// The length of `text` in characters: where "the end" is.
    end: usize,
    /// Parentheses and `not`s open around the current token.
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next).map(|lexeme| &lexeme.token)
    }

    fn at(&self) -> usize {
        self.tokens
            .get(self.next)
            .map_or(self.end, |lexeme| lexeme.at)
    }

    fn eat(&mut self, token: &Token) -> bool {
        let found = self.peek() == Some(token);
        if found {
            self.next += 1;
        }
        found
    }

    fn expected(&self, what: &str) -> FilterError {
        let found = self
            .peek()
            .map_or_else(|| "the end of the expression".into(), Token::describe);
        FilterError::at(
            self.text,
            self.at(),
            format!("expected {what}, found {found}"),
        )
    }

    /// One more level, opened by the `(` or `not` at `at`.
    fn deeper(&mut self, at: usize) -> Result<(), FilterError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(FilterError::at(
                self.text,
                at,
                format!("more than {MAX_DEPTH} parentheses and `not`s nested"),
            ));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Expr, FilterError> {
        let first = self.and()?;
        let mut items = vec![first];
        while self.eat(&Token::Keyword(Keyword::Or)) {
            items.push(self.and()?);
        }
        Ok(single_or(items, Expr::Or))
    }

    fn and(&mut self) -> Result<Expr, FilterError> {
        let first = self.not()?;
        let mut items = vec![first];
        while self.eat(&Token::Keyword(Keyword::And)) {
            items.push(self.not()?);
        }
        Ok(single_or(items, Expr::And))
    }

    fn not(&mut self) -> Result<Expr, FilterError> {
        let at = self.at();
        if self.eat(&Token::Keyword(Keyword::Not)) {
            self.deeper(at)?;
            let inner = self.not()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        if self.eat(&Token::Open) {
            self.deeper(at)?;
            let inner = self.or()?;
            self.depth -= 1;
            if !self.eat(&Token::Close) {
                return Err(self.expected(&format!("`)` to close the `(` at character {}", at + 1)));
            }
            return Ok(inner);
        }
        self.predicate()
    }

    /// A comparison, `in`, or `is null`.
    fn predicate(&mut self) -> Result<Expr, FilterError> {
        let left_at = self.at();
        let left = self.operand()?;
        match self.peek() {
            Some(&Token::Compare(op)) => {
                self.next += 1;
                let right_at = self.at();
                let right = self.operand()?;
                for (operand, at) in [(&left, left_at), (&right, right_at)] {
                    if *operand == Operand::Literal(Literal::Null) {
                        return Err(FilterError::at(
                            self.text,
                            at,
                            "a comparison with null is never true: write `is null` or `is not null`"
                                .into(),
                        ));
                    }
                }
                Ok(Expr::Compare { left, op, right })
            }
            Some(Token::Keyword(Keyword::Is)) => {
                self.next += 1;
                let negated = self.eat(&Token::Keyword(Keyword::Not));
                if !self.eat(&Token::Keyword(Keyword::Null)) {
                    let what = if negated {
                        "`null` after `is not`"
                    } else {
                        "`null` or `not null` after `is`"
                    };
                    return Err(self.expected(what));
                }
                Ok(Expr::IsNull {
                    operand: left,
                    negated,
                })
            }
            Some(Token::Keyword(Keyword::In)) => {
                self.next += 1;
                self.list(left, false)
            }
            Some(Token::Keyword(Keyword::Not)) => {
                self.next += 1;
                if !self.eat(&Token::Keyword(Keyword::In)) {
                    return Err(self.expected("`in` after `not`"));
                }
                self.list(left, true)
            }
            _ => Err(self
                .expected("a comparison (=, !=, <, <=, >, >=, in, not in, is null, is not null)")),
        }
    }

    /// The `(value, …)` after `in`.
    fn list(&mut self, operand: Operand, negated: bool) -> Result<Expr, FilterError> {
        if !self.eat(&Token::Open) {
            return Err(self.expected("`(` and a list of values after `in`"));
        }
        let mut list = Vec::new();
        loop {
            match self.literal() {
                Some(literal) => list.push(literal),
                None => {
                    return Err(self.expected("a value (a string, number, true, false or null)"));
                }
            }
            if self.eat(&Token::Close) {
                return Ok(Expr::In {
                    operand,
                    list,
                    negated,
                });
            }
            if !self.eat(&Token::Comma) {
                return Err(self.expected("`,` or `)`"));
            }
        }
    }

    fn operand(&mut self) -> Result<Operand, FilterError> {
        if let Some(Token::Name(name)) = self.peek() {
            let column = Operand::Column(name.clone());
            self.next += 1;
            return Ok(column);
        }
        match self.literal() {
            Some(literal) => Ok(Operand::Literal(literal)),
            None => Err(self.expected("a column name or a value")),
        }
    }

    /// The literal at the current token, consumed; None (nothing consumed) for another token.
    fn literal(&mut self) -> Option<Literal> {
        let literal = match self.peek()? {
            Token::String(text) => Literal::String(text.clone()),
            Token::Number(number) => Literal::Number(*number),
            Token::Keyword(Keyword::True) => Literal::Bool(true),
            Token::Keyword(Keyword::False) => Literal::Bool(false),
            Token::Keyword(Keyword::Null) => Literal::Null,
            _ => return None,
        };
        self.next += 1;
        Some(literal)
    }
}

/// One operand alone, else the `and` or `or` of all.
fn single_or(items: Vec<Expr>, join: fn(Vec<Expr>) -> Expr) -> Expr {
    match <[Expr; 1]>::try_from(items) {
        Ok([only]) => only,
        Err(items) => join(items),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{CompareOp, Num};
    use proptest::prelude::*;

    fn fails(text: &str) -> (usize, String) {
        match parse(text) {
            Ok(expr) => panic!("`{text}` parsed as {expr:?}"),
            Err(error) => {
                assert_eq!(error.text, text);
                (error.position, error.message)
            }
        }
    }

    fn column(name: &str) -> Operand {
        Operand::Column(name.into())
    }

    fn equals(name: &str, value: i128) -> Expr {
        Expr::Compare {
            left: column(name),
            op: CompareOp::Eq,
            right: Operand::Literal(Literal::Number(Num::Int(value))),
        }
    }

    #[test]
    fn or_holds_ands_and_chains_stay_flat() {
        let expr = parse("a = 1 or b = 2 and c = 3 or d = 4").expect("parses");
        assert_eq!(
            expr,
            Expr::Or(vec![
                equals("a", 1),
                Expr::And(vec![equals("b", 2), equals("c", 3)]),
                equals("d", 4),
            ])
        );
        let expr = parse("not a = 1 and (b = 2)").expect("parses");
        assert_eq!(
            expr,
            Expr::And(vec![Expr::Not(Box::new(equals("a", 1))), equals("b", 2)])
        );
        let chain = vec!["x = 1"; 10_000].join(" or ");
        assert!(matches!(parse(&chain), Ok(Expr::Or(items)) if items.len() == 10_000));
    }

    #[test]
    fn literals_names_and_operators_are_read() {
        let expr =
            parse(r#"screen.reason <> 'it''s' and "a ""b""" >= -2.5 and _x1 in (TRUE, null, -3)"#)
                .expect("parses");
        assert_eq!(
            expr,
            Expr::And(vec![
                Expr::Compare {
                    left: column("screen.reason"),
                    op: CompareOp::Ne,
                    right: Operand::Literal(Literal::String("it's".into())),
                },
                Expr::Compare {
                    left: column("a \"b\""),
                    op: CompareOp::Ge,
                    right: Operand::Literal(Literal::Number(Num::Float(-2.5))),
                },
                Expr::In {
                    operand: column("_x1"),
                    list: vec![
                        Literal::Bool(true),
                        Literal::Null,
                        Literal::Number(Num::Int(-3)),
                    ],
                    negated: false,
                },
            ])
        );
        for (symbol, op) in [
            ("=", CompareOp::Eq),
            ("==", CompareOp::Eq),
            ("!=", CompareOp::Ne),
            ("<>", CompareOp::Ne),
            ("<", CompareOp::Lt),
            ("<=", CompareOp::Le),
            (">", CompareOp::Gt),
            (">=", CompareOp::Ge),
        ] {
            let expr = parse(&format!("a{symbol}-1")).expect("parses");
            assert!(
                matches!(expr, Expr::Compare { op: found, .. } if found == op),
                "{symbol}"
            );
        }
        assert!(matches!(
            parse("x IS NOT NULL"),
            Ok(Expr::IsNull { negated: true, .. })
        ));
        assert!(matches!(
            parse("x Not In ('a')"),
            Ok(Expr::In { negated: true, .. })
        ));
    }

    #[test]
    fn errors_name_the_character_and_what_was_expected() {
        let cases = [
            ("", 1, "empty expression"),
            (
                "score >= 7 and",
                15,
                "expected a column name or a value, found the end of the expression",
            ),
            ("score => 7", 7, "unknown operator `=>`"),
            ("a && b", 3, "unknown operator `&&`: write `and`"),
            ("a ! b", 3, "unknown operator `!`"),
            ("fit = 'weak", 7, "unterminated string: no closing `'`"),
            ("\"my col = 1", 1, "unterminated name"),
            ("\"\" = 1", 1, "empty column name"),
            (
                "score >= 7 fit",
                12,
                "expected `and`, `or` or the end of the expression, found the name `fit`",
            ),
            (
                "a = 1)",
                6,
                "expected `and`, `or` or the end of the expression, found `)`",
            ),
            ("(a = 1", 7, "expected `)` to close the `(` at character 1"),
            (
                "(score >= 7",
                12,
                "expected `)` to close the `(` at character 1, found the end of the expression",
            ),
            (
                "fit in 'weak'",
                8,
                "expected `(` and a list of values after `in`, found a string",
            ),
            ("fit in ()", 9, "expected a value"),
            (
                "fit in (other)",
                9,
                "expected a value (a string, number, true, false or null), found the name `other`",
            ),
            (
                "fit in ('a' 'b')",
                13,
                "expected `,` or `)`, found a string",
            ),
            (
                "fit not like 'a'",
                9,
                "expected `in` after `not`, found the name `like`",
            ),
            (
                "x is 1",
                6,
                "expected `null` or `not null` after `is`, found a number",
            ),
            ("x is not", 9, "expected `null` after `is not`"),
            (
                "score",
                6,
                "expected a comparison (=, !=, <, <=, >, >=, in, not in, is null, is not null), found the end",
            ),
            ("score 7", 7, "expected a comparison"),
            (
                "a < b < c",
                7,
                "expected `and`, `or` or the end of the expression, found `<`",
            ),
            (
                "x = null",
                5,
                "a comparison with null is never true: write `is null`",
            ),
            ("null != x", 1, "a comparison with null is never true"),
            ("a.b.c = 1", 4, "a column name has at most one dot"),
            ("a. = 1", 3, "expected a column name after `.`"),
            ("x = - 1", 5, "expected a digit after `-`"),
            ("x = 7.", 7, "expected a digit after the decimal point"),
            ("x = 1e5", 6, "unexpected `e` in a number"),
            ("x = 1.2.3", 8, "unexpected `.` in a number"),
            ("é = 1", 1, "unexpected character `é`"),
            ("naïve = 1", 3, "unexpected character `ï`"),
            (
                "and = 1",
                1,
                "expected a column name or a value, found `and`",
            ),
            (
                "not",
                4,
                "expected a column name or a value, found the end of the expression",
            ),
        ];
        for (text, position, message) in cases {
            let (found_position, found_message) = fails(text);
            assert!(
                found_message.starts_with(message),
                "`{text}`: {found_message}"
            );
            assert_eq!(found_position, position, "`{text}`: {found_message}");
        }
    }

    #[test]
    fn the_error_message_shows_the_expression() {
        let error = parse("fit = 'weak").expect_err("unterminated");
        assert_eq!(
            error.to_string(),
            "unterminated string: no closing `'` (at character 7 of `fit = 'weak`)"
        );
    }

    #[test]
    fn nesting_is_bounded_instead_of_overflowing_the_stack() {
        let within = format!("{}a = 1{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(parse(&within).is_ok());
        let (position, message) = fails(&format!(
            "{}a = 1{}",
            "(".repeat(100_000),
            ")".repeat(100_000)
        ));
        assert_eq!(position, MAX_DEPTH + 1);
        assert!(message.starts_with("more than 64"), "{message}");
        let (_, message) = fails(&"not ".repeat(100_000));
        assert!(message.starts_with("more than 64"), "{message}");
    }

    /// Valid expressions, to be cut short and scrambled.
    const VALID: [&str; 4] = [
        "fit != 'weak' and score >= 7",
        r#"(screen.fit in ('a', null, -1.5) or not "my col" is not null) and x <> y"#,
        "a = 1 or b == 2.25 and c not in (true, false) or d is null",
        "not (not x < 'it''s')",
    ];

    proptest! {
        #[test]
        fn any_text_parses_or_fails_without_panicking(text in any::<String>()) {
            let _ = parse(&text);
        }

        #[test]
        fn any_bytes_parse_or_fail_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse(&String::from_utf8_lossy(&bytes));
        }

        /// Pieces of the language in any order reach far deeper into the parser than random text.
        #[test]
        fn any_token_soup_parses_or_fails_without_panicking(
            pieces in prop::collection::vec(
                prop::sample::select(vec![
                    "a", "b.c", "\"d e\"", "'s'", "'", "\"", "7", "-2.5", "-", ".", "(", ")",
                    ",", "=", "!=", "<", ">=", "!", "and", "or", "not", "in", "is", "null",
                    "true", " ", "é",
                ]),
                0..40,
            ),
            spaced in any::<bool>(),
        ) {
            let text = pieces.join(if spaced { " " } else { "" });
            if let Ok(expr) = parse(&text) {
                let record = serde_json::Map::new();
                let _ = expr.eval(&record);
            }
        }

        #[test]
        fn cut_and_scrambled_valid_expressions_fail_without_panicking(
            which in 0..VALID.len(),
            cut in 0usize..100,
            swap in any::<(usize, usize)>(),
        ) {
            let chars: Vec<char> = VALID[which].chars().collect();
            let cut = cut.min(chars.len());
            let _ = parse(&chars[..cut].iter().collect::<String>());
            let _ = parse(&chars[cut..].iter().collect::<String>());
            let mut swapped = chars.clone();
            swapped.swap(swap.0 % chars.len(), swap.1 % chars.len());
            let _ = parse(&swapped.iter().collect::<String>());
        }
    }

    #[test]
    fn every_prefix_of_a_valid_expression_fails_without_panicking() {
        for text in VALID {
            assert!(parse(text).is_ok(), "{text}");
            let chars: Vec<char> = text.chars().collect();
            for cut in 0..chars.len() {
                let _ = parse(chars[..cut].iter().collect::<String>().trim());
            }
        }
    }
}
