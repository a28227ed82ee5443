//! `${NAME}` in a pipeline file, replaced from the environment inside double-quoted strings
//! only: comments, single-quoted strings and bare text are left as written.

/// Where the interpolation scan is in the TOML text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lexeme {
    Plain,
    Comment,
    /// `"…"`: escapes, and `${NAME}` replaced.
    Basic,
    /// `"""…"""`: the same over several lines.
    MultiBasic,
    /// `'…'`: taken as written.
    Literal,
    MultiLiteral,
}

/// Replaces `${NAME}` inside double-quoted strings with the variable's value, escaped for a
/// TOML basic string. Comments, single-quoted strings and bare text are left as written, so a
/// `${…}` in a comment neither needs the variable nor fails the file.
pub(super) fn interpolate(
    text: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut state = Lexeme::Plain;
    let mut line = 1;
    let mut rest = text;
    while let Some(character) = rest.chars().next() {
        let starts = |prefix: &str| rest.starts_with(prefix);
        let mut taken = character.len_utf8();
        match (state, character) {
            (_, '\n') => {
                line += 1;
                if matches!(state, Lexeme::Comment | Lexeme::Basic | Lexeme::Literal) {
                    state = Lexeme::Plain;
                }
            }
            (Lexeme::Plain, '#') => state = Lexeme::Comment,
            (Lexeme::Plain, '"') if starts("\"\"\"") => (state, taken) = (Lexeme::MultiBasic, 3),
            (Lexeme::Plain, '"') => state = Lexeme::Basic,
            (Lexeme::Plain, '\'') if starts("\'\'\'") => (state, taken) = (Lexeme::MultiLiteral, 3),
            (Lexeme::Plain, '\'') => state = Lexeme::Literal,
            (Lexeme::Basic | Lexeme::MultiBasic, '\\') => {
                // The escaped character is copied with its backslash (an escaped quote does
                // not end the string), unless it is a line break.
                taken += rest[1..]
                    .chars()
                    .next()
                    .filter(|next| *next != '\n')
                    .map_or(0, char::len_utf8);
            }
            (Lexeme::Basic, '"') => state = Lexeme::Plain,
            (Lexeme::MultiBasic, '"') if starts("\"\"\"") => (state, taken) = (Lexeme::Plain, 3),
            (Lexeme::Literal, '\'') => state = Lexeme::Plain,
            (Lexeme::MultiLiteral, '\'') if starts("\'\'\'") => (state, taken) = (Lexeme::Plain, 3),
            (Lexeme::Basic | Lexeme::MultiBasic, '$') if starts("${") => {
                let after = &rest[2..];
                let end = after
                    .find(['}', '\n'])
                    .filter(|end| after[*end..].starts_with('}'))
                    .ok_or_else(|| format!("line {line}: \"${{\" is not closed"))?;
                let name = &after[..end];
                let value = env(name).ok_or_else(|| {
                    format!("line {line}: environment variable {name} is not set")
                })?;
                for character in value.chars() {
                    match character {
                        '\\' => out.push_str("\\\\"),
                        '"' => out.push_str("\\\""),
                        '\n' => out.push_str("\\n"),
                        other => out.push(other),
                    }
                }
                rest = &after[end + 1..];
                continue;
            }
            _ => {}
        }
        out.push_str(&rest[..taken]);
        rest = &rest[taken..];
    }
    Ok(out)
}
