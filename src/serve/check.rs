//! A batch's validation: every line of its input file read with the engine's own request
//! parser (JSON, fields, duplicate custom_ids, line length), plus the one rule the engine does
//! not know, that each line's `url` is the batch's `endpoint`. A file with any bad line fails
//! the batch before a request is sent, as OpenAI's validation does, with the lines named.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::Path;

use super::wire::BatchError;
use crate::item::SourceItem;
use crate::source::lines::{LineReader, RawLine};
use crate::source::request::RequestParser;

/// Errors listed in `errors.data` at most; the count of the others is in the last entry.
const MAX_REPORTED: usize = 100;

/// Endpoints a batch may name: OpenAI's paths, and Ollama's native ones as an extension.
pub const ENDPOINTS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/api/chat",
    "/api/generate",
    "/api/embed",
];

/// The input's request count, or why it cannot run (the problems, by line).
pub fn check_input(
    path: &Path,
    endpoint: &str,
    max_line_bytes: usize,
) -> io::Result<Result<u64, Vec<BatchError>>> {
    // The engine's line reader: a line over the limit is skipped as it is read and reported
    // by its length, so validating a file never holds more than `max_line_bytes` of it.
    let mut reader = LineReader::new(BufReader::new(File::open(path)?), max_line_bytes);
    let mut parser = RequestParser::new(None);
    let (mut requests, mut problems, mut unreported) = (0u64, Vec::new(), 0u64);
    let mut report = |problem: BatchError| {
        if problems.len() < MAX_REPORTED {
            problems.push(problem);
        } else {
            unreported += 1;
        }
    };
    while let Some(raw) = reader.next_line()? {
        let number = match raw {
            RawLine::Line { number, .. } | RawLine::TooLong { number, .. } => number,
        };
        match parser.parse(raw) {
            None => {}
            Some(SourceItem::Invalid(invalid)) => report(BatchError {
                code: invalid.code.as_str().to_owned(),
                message: invalid.message,
                param: None,
                line: Some(invalid.line),
            }),
            Some(SourceItem::Request(request)) if request.url != endpoint => report(BatchError {
                code: "mismatched_endpoint".into(),
                message: format!(
                    "line {number}: url {:?} is not the batch's endpoint {endpoint:?}",
                    request.url
                ),
                param: Some("url".into()),
                line: Some(number),
            }),
            Some(SourceItem::Request(_)) => requests += 1,
        }
    }
    if unreported > 0 {
        problems.push(BatchError {
            code: "more_errors".into(),
            message: format!("{unreported} more lines have problems"),
            param: None,
            line: None,
        });
    }
    if problems.is_empty() && requests == 0 {
        problems.push(BatchError {
            code: "empty_file".into(),
            message: "the input file holds no requests".into(),
            param: None,
            line: None,
        });
    }
    Ok(if problems.is_empty() {
        Ok(requests)
    } else {
        Err(problems)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<u64, Vec<BatchError>> {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("input.jsonl");
        std::fs::write(&path, text).expect("written");
        check_input(&path, "/v1/chat/completions", 1 << 20).expect("readable")
    }

    fn line(id: &str, url: &str) -> String {
        format!(
            r#"{{"custom_id":"{id}","method":"POST","url":"{url}","body":{{"model":"m","messages":[]}}}}"#
        ) + "\n"
    }

    #[test]
    fn good_lines_are_counted() {
        let text = line("a", "/v1/chat/completions") + "\n" + &line("b", "/v1/chat/completions");
        assert_eq!(check(&text), Ok(2));
    }

    #[test]
    fn bad_lines_are_named() {
        let text = line("z", "/v1/embeddings")
            + "not json\n"
            + &line("a", "/v1/chat/completions")
            + &line("a", "/v1/chat/completions");
        let problems = check(&text).expect_err("refused");
        let lines: Vec<_> = problems.iter().map(|problem| problem.line).collect();
        assert_eq!(lines, [Some(1), Some(2), Some(4)], "{problems:?}");
        assert_eq!(problems[0].code, "mismatched_endpoint");
        assert_eq!(check("").expect_err("refused")[0].code, "empty_file");
    }

    #[test]
    fn a_line_over_the_limit_is_named_and_the_next_ones_still_read() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("input.jsonl");
        let long = format!("{}\n", "x".repeat(5000));
        let text = line("a", "/v1/chat/completions") + &long + &line("b", "/v1/chat/completions");
        std::fs::write(&path, text).expect("written");
        let problems = check_input(&path, "/v1/chat/completions", 1000)
            .expect("readable")
            .expect_err("refused");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].line, Some(2));
    }
}
