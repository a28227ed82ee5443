//! The JSONL line reader: input split into lines without a line end or a leading byte-order
//! mark, never holding more than `--max-line-bytes` of one line, so a 100 MB line costs no more
//! memory than a short one. What a line means is the request parser's (`source::request`);
//! recognising a first line that is a CSV or TSV header, to say so, is this reader's.

use std::io::{self, BufRead};

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// One line as read, without its terminator (`\n` or `\r\n`) or a leading UTF-8 BOM.
#[derive(Debug, PartialEq, Eq)]
pub enum RawLine<'a> {
    Line {
        number: u64,
        bytes: &'a [u8],
    },
    /// The line exceeded the limit; its bytes were skipped, not kept.
    TooLong {
        number: u64,
        bytes_seen: u64,
    },
}

/// Splits a byte stream into lines while holding at most `max_line_bytes` of any one line.
pub struct LineReader<R> {
    inner: R,
    max_line_bytes: usize,
    line_number: u64,
    line: Vec<u8>,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(inner: R, max_line_bytes: usize) -> Self {
        LineReader {
            inner,
            max_line_bytes,
            line_number: 0,
            line: Vec::new(),
        }
    }

    /// Number of the last line returned (1-based).
    pub fn line_number(&self) -> u64 {
        self.line_number
    }

    /// The next line, or `None` at the end of input. A last line without `\n` still counts.
    pub fn next_line(&mut self) -> io::Result<Option<RawLine<'_>>> {
        self.line.clear();
        let mut bytes_seen: u64 = 0;
        let mut too_long = false;
        let mut read_anything = false;
        loop {
            let available = match self.inner.fill_buf() {
                Ok(available) => available,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            if available.is_empty() {
                if !read_anything {
                    return Ok(None);
                }
                break;
            }
            read_anything = true;
            let (chunk, consumed, complete) = match memchr::memchr(b'\n', available) {
                Some(end) => (&available[..end], end + 1, true),
                None => (available, available.len(), false),
            };
            // A CRLF line end is not part of the line, so its `\r` does not count to the limit.
            let counted = if complete && chunk.ends_with(b"\r") {
                chunk.len() - 1
            } else {
                chunk.len()
            };
            bytes_seen += counted as u64;
            if !too_long {
                if self.line.len() + counted > self.max_line_bytes {
                    too_long = true;
                    self.line = Vec::new();
                } else {
                    self.line.extend_from_slice(chunk);
                }
            }
            self.inner.consume(consumed);
            if complete {
                break;
            }
        }
        self.line_number += 1;
        let number = self.line_number;
        if too_long {
            return Ok(Some(RawLine::TooLong { number, bytes_seen }));
        }
        let mut bytes = self.line.as_slice();
        if let Some(stripped) = bytes.strip_suffix(b"\r") {
            bytes = stripped;
        }
        if number == 1 {
            if let Some(stripped) = bytes.strip_prefix(UTF8_BOM) {
                bytes = stripped;
            }
        }
        Ok(Some(RawLine::Line { number, bytes }))
    }
}

/// Header fields shown in the hint before the rest is elided.
const HEADER_FIELDS_SHOWN: usize = 4;

/// What to say of a first line that is not JSON but looks like a CSV or TSV header (two or more
/// bare words between commas or tabs, no `{`): what it is, and a one-command way to convert the
/// file. `None` when it does not look like one. Only the first line is worth asking: further
/// down, a line with commas is more likely broken JSON.
pub fn csv_header_hint(line: &str) -> Option<String> {
    let line = line.trim();
    let (kind, separator) = match line.contains('\t') {
        true => ("TSV", '\t'),
        false => ("CSV", ','),
    };
    let fields: Vec<&str> = line
        .split(separator)
        .map(|field| {
            let field = field.trim();
            field
                .strip_prefix('"')
                .and_then(|field| field.strip_suffix('"'))
                .unwrap_or(field)
        })
        .collect();
    let bare_word = |field: &&str| {
        !field.is_empty()
            && field
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ' '))
    };
    if fields.len() < 2 || !fields.iter().all(bare_word) {
        return None;
    }
    let mut shown = fields[..fields.len().min(HEADER_FIELDS_SHOWN)].join(",");
    if fields.len() > HEADER_FIELDS_SHOWN {
        shown.push_str(",…");
    }
    let file = format!("in.{}", kind.to_lowercase());
    Some(format!(
        "looks like a {kind} header ({shown}): batchflow reads JSONL or Parquet; convert it, e.g. with DuckDB: duckdb -c \"COPY (FROM '{file}') TO 'in.jsonl' (FORMAT json)\""
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csv_or_tsv_header_is_recognised() {
        let hint = csv_header_hint("name,bio,age,city,country").expect("a CSV header");
        assert!(
            hint.starts_with(
                "looks like a CSV header (name,bio,age,city,…): batchflow reads JSONL or Parquet"
            ),
            "{hint}"
        );
        assert!(hint.contains("duckdb -c \"COPY (FROM 'in.csv')"), "{hint}");
        let hint = csv_header_hint("\"first name\"\t\"last_name\"\r").expect("a TSV header");
        assert!(
            hint.starts_with("looks like a TSV header (first name,last_name)"),
            "{hint}"
        );
        assert!(hint.contains("'in.tsv'"), "{hint}");
    }

    #[test]
    fn json_and_single_words_are_not_csv_headers() {
        for line in [
            r#"{"custom_id": "a", "body": {}}"#,
            r#"{custom_id: a, body: b}"#,
            "prompt",
            "a,,b",
            "1, 2, {3}",
            "[1,2]",
        ] {
            let hint = csv_header_hint(line);
            assert!(hint.is_none(), "{line:?} gave {hint:?}");
        }
    }

    fn lines(input: &[u8], max: usize) -> Vec<String> {
        let mut reader = LineReader::new(input, max);
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().expect("reading a slice cannot fail") {
            out.push(match line {
                RawLine::Line { number, bytes } => {
                    format!("{number}:{}", String::from_utf8_lossy(bytes))
                }
                RawLine::TooLong { number, bytes_seen } => {
                    format!("{number}:too long {bytes_seen}")
                }
            });
        }
        out
    }

    #[test]
    fn reader_strips_crlf_bom_and_keeps_an_unterminated_last_line() {
        assert_eq!(
            lines(b"\xEF\xBB\xBFa\r\nb\n\nc", 100),
            vec!["1:a", "2:b", "3:", "4:c"]
        );
    }

    #[test]
    fn reader_skips_an_overlong_line_and_goes_on() {
        let input = [b"short\n".as_slice(), &[b'x'; 50], b"\nafter\n"].concat();
        let mut reader = LineReader::new(io::BufReader::with_capacity(8, input.as_slice()), 10);
        let mut got = Vec::new();
        while let Some(line) = reader.next_line().expect("slice") {
            got.push(format!("{line:?}"));
        }
        assert_eq!(got.len(), 3);
        assert!(
            got[1].contains("TooLong { number: 2, bytes_seen: 50 }"),
            "{got:?}"
        );
        assert!(got[2].contains("number: 3"), "{got:?}");
    }
}
