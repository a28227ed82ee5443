//! The characters of a `where` expression into tokens: names (plain, `stage.column`, or
//! double-quoted), keywords in any case, strings, numbers, operators and punctuation, each with
//! the character it starts at. The grammar over them is `filter::parse`'s.

use super::{CompareOp, FilterError, Num};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Keyword {
    And,
    Or,
    Not,
    In,
    Is,
    Null,
    True,
    False,
}

impl Keyword {
    /// The keyword `word` spells, in any case.
    fn of(word: &str) -> Option<Keyword> {
        Some(match word.to_ascii_lowercase().as_str() {
            "and" => Keyword::And,
            "or" => Keyword::Or,
            "not" => Keyword::Not,
            "in" => Keyword::In,
            "is" => Keyword::Is,
            "null" => Keyword::Null,
            "true" => Keyword::True,
            "false" => Keyword::False,
            _ => return None,
        })
    }

    fn spelling(self) -> &'static str {
        match self {
            Keyword::And => "and",
            Keyword::Or => "or",
            Keyword::Not => "not",
            Keyword::In => "in",
            Keyword::Is => "is",
            Keyword::Null => "null",
            Keyword::True => "true",
            Keyword::False => "false",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Token {
    /// A column: a plain, dotted or double-quoted name.
    Name(String),
    Keyword(Keyword),
    String(String),
    Number(Num),
    Compare(CompareOp),
    Open,
    Close,
    Comma,
}

impl Token {
    pub(super) fn describe(&self) -> String {
        match self {
            Token::Name(name) => format!("the name `{name}`"),
            Token::Keyword(keyword) => format!("`{}`", keyword.spelling()),
            Token::String(_) => "a string".into(),
            Token::Number(_) => "a number".into(),
            Token::Compare(op) => format!("`{}`", op_symbol(*op)),
            Token::Open => "`(`".into(),
            Token::Close => "`)`".into(),
            Token::Comma => "`,`".into(),
        }
    }
}

fn op_symbol(op: CompareOp) -> &'static str {
    match op {
        CompareOp::Eq => "=",
        CompareOp::Ne => "!=",
        CompareOp::Lt => "<",
        CompareOp::Le => "<=",
        CompareOp::Gt => ">",
        CompareOp::Ge => ">=",
    }
}

/// A token and the character it starts at (from 0).
pub(super) struct Lexeme {
    pub(super) token: Token,
    pub(super) at: usize,
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

pub(super) fn lex(text: &str) -> Result<Vec<Lexeme>, FilterError> {
    let chars: Vec<char> = text.chars().collect();
    let fail = |at: usize, message: String| Err(FilterError::at(text, at, message));
    let mut tokens = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let start = i;
        let token = match c {
            _ if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => {
                i += 1;
                Token::Open
            }
            ')' => {
                i += 1;
                Token::Close
            }
            ',' => {
                i += 1;
                Token::Comma
            }
            '\'' | '"' => {
                let Some((content, after)) = quoted(&chars, c, i) else {
                    let what = if c == '\'' { "string" } else { "name" };
                    return fail(start, format!("unterminated {what}: no closing `{c}`"));
                };
                i = after;
                if c == '\'' {
                    Token::String(content)
                } else if content.is_empty() {
                    return fail(start, "empty column name \"\"".into());
                } else {
                    Token::Name(content)
                }
            }
            '-' | '0'..='9' => {
                let (number, after) = number(text, &chars, i)?;
                i = after;
                Token::Number(number)
            }
            _ if is_name_start(c) => {
                while chars.get(i).copied().is_some_and(is_name_char) {
                    i += 1;
                }
                if chars.get(i) == Some(&'.') {
                    i += 1;
                    if !chars.get(i).copied().is_some_and(is_name_start) {
                        return fail(i, "expected a column name after `.`".into());
                    }
                    while chars.get(i).copied().is_some_and(is_name_char) {
                        i += 1;
                    }
                    if chars.get(i) == Some(&'.') {
                        return fail(i, "a column name has at most one dot (stage.column)".into());
                    }
                    Token::Name(chars[start..i].iter().collect())
                } else {
                    let word: String = chars[start..i].iter().collect();
                    Keyword::of(&word).map_or(Token::Name(word), Token::Keyword)
                }
            }
            '=' | '!' | '<' | '>' | '&' | '|' => {
                while chars
                    .get(i)
                    .is_some_and(|next| matches!(next, '=' | '!' | '<' | '>' | '&' | '|'))
                {
                    i += 1;
                }
                let symbol: String = chars[start..i].iter().collect();
                match operator(&symbol) {
                    Ok(op) => Token::Compare(op),
                    Err(message) => return fail(start, message),
                }
            }
            _ => return fail(start, format!("unexpected character `{c}`")),
        };
        tokens.push(Lexeme { token, at: start });
    }
    Ok(tokens)
}

/// The content of the text quoted by `quote` at `open` (a doubled quote is one quote) and the
/// index after its closing quote; None when it never closes.
fn quoted(chars: &[char], quote: char, open: usize) -> Option<(String, usize)> {
    let mut content = String::new();
    let mut i = open + 1;
    loop {
        match chars.get(i) {
            None => return None,
            Some(&c) if c == quote => {
                if chars.get(i + 1) == Some(&quote) {
                    content.push(quote);
                    i += 2;
                } else {
                    return Some((content, i + 1));
                }
            }
            Some(&c) => {
                content.push(c);
                i += 1;
            }
        }
    }
}

/// The number starting at `start` (`-`? digits (`.` digits)?) and the index after it.
fn number(text: &str, chars: &[char], start: usize) -> Result<(Num, usize), FilterError> {
    let digits_from = |mut i: usize| {
        while chars.get(i).is_some_and(char::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut i = start;
    if chars.get(i) == Some(&'-') {
        i += 1;
        if !chars.get(i).is_some_and(char::is_ascii_digit) {
            return Err(FilterError::at(
                text,
                start,
                "expected a digit after `-`".into(),
            ));
        }
    }
    i = digits_from(i);
    let mut decimal = false;
    if chars.get(i) == Some(&'.') {
        decimal = true;
        if !chars.get(i + 1).is_some_and(char::is_ascii_digit) {
            return Err(FilterError::at(
                text,
                i + 1,
                "expected a digit after the decimal point".into(),
            ));
        }
        i = digits_from(i + 1);
    }
    if let Some(&c) = chars.get(i).filter(|c| is_name_char(**c) || **c == '.') {
        return Err(FilterError::at(
            text,
            i,
            format!("unexpected `{c}` in a number"),
        ));
    }
    let spelled: String = chars[start..i].iter().collect();
    let parsed = match spelled.parse::<i128>() {
        Ok(int) if !decimal => Some(Num::Int(int)),
        _ => spelled
            .parse::<f64>()
            .ok()
            .filter(|float| float.is_finite())
            .map(Num::Float),
    };
    match parsed {
        Some(number) => Ok((number, i)),
        None => Err(FilterError::at(
            text,
            start,
            format!("the number {spelled} is out of range"),
        )),
    }
}

fn operator(symbol: &str) -> Result<CompareOp, String> {
    Ok(match symbol {
        "=" | "==" => CompareOp::Eq,
        "!=" | "<>" => CompareOp::Ne,
        "<" => CompareOp::Lt,
        "<=" => CompareOp::Le,
        ">" => CompareOp::Gt,
        ">=" => CompareOp::Ge,
        "&&" | "&" => return Err(format!("unknown operator `{symbol}`: write `and`")),
        "||" | "|" => return Err(format!("unknown operator `{symbol}`: write `or`")),
        "!" => return Err("unknown operator `!`: write `not`, or `!=`".into()),
        _ => {
            return Err(format!(
                "unknown operator `{symbol}` (the operators are =, ==, !=, <>, <, <=, >, >=)"
            ));
        }
    })
}
