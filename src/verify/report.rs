//! What `verify` found, as it is told: a problem per input line, row or file (a JSON line
//! each), and the summary line. Finding them is the parent module's.

/// What is wrong with one input line, or with one row that belongs to none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// No results row.
    Missing,
    /// `count` rows, in these files (one entry a row).
    Duplicated { count: u64, files: Vec<String> },
    /// A row in `file` that no input line owns.
    Unexpected { file: String },
    /// A results file that cannot be read (`custom_id` is `None` and `line` 0): the rows it
    /// held show as missing lines. A part of a generation that `--overwrite` replaced is one
    /// too: its rows are not the dataset's.
    Damaged { file: String, reason: String },
    /// A part of another shard layout than the dataset's main one (`--shard` counts mixed in
    /// one directory): its rows are counted, and likely doubled.
    OtherLayout { file: String, reason: String },
}

/// A problem with its line: the input's line (or row) number for missing and duplicated, the
/// row's `request_line` for unexpected; a damaged file has no line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub custom_id: Option<String>,
    pub line: u64,
    pub kind: ProblemKind,
}

impl Problem {
    /// One JSON line: `{"custom_id","line","problem"}`, with `count` and `files` for a
    /// duplicate and `file` for an unexpected row; `{"file","problem","reason"}` for a damaged
    /// file.
    pub fn to_json(&self) -> String {
        self.json(None)
    }

    /// [`Problem::to_json`] for a problem of a pipeline's stage: `"stage"` first.
    pub fn to_stage_json(&self, stage: &str) -> String {
        self.json(Some(stage))
    }

    fn json(&self, stage: Option<&str>) -> String {
        /// The line's fields, in this order.
        #[derive(serde::Serialize)]
        struct Line<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            stage: Option<&'a str>,
            custom_id: Option<&'a str>,
            line: u64,
            problem: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            count: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            files: Option<&'a [String]>,
            #[serde(skip_serializing_if = "Option::is_none")]
            file: Option<&'a str>,
        }
        let mut line = Line {
            stage,
            custom_id: self.custom_id.as_deref(),
            line: self.line,
            problem: "missing",
            count: None,
            files: None,
            file: None,
        };
        match &self.kind {
            ProblemKind::Missing => {}
            ProblemKind::Duplicated { count, files } => {
                line.problem = "duplicated";
                line.count = Some(*count);
                line.files = Some(files);
            }
            ProblemKind::Unexpected { file } => {
                line.problem = "unexpected";
                line.file = Some(file);
            }
            // A file, not a line: fields of its own.
            ProblemKind::Damaged { file, reason } => {
                let mut line =
                    serde_json::json!({"file": file, "problem": "damaged", "reason": reason});
                if let Some(stage) = stage {
                    line["stage"] = stage.into();
                }
                return line.to_string();
            }
            ProblemKind::OtherLayout { file, reason } => {
                let mut line =
                    serde_json::json!({"file": file, "problem": "other_layout", "reason": reason});
                if let Some(stage) = stage {
                    line["stage"] = stage.into();
                }
                return line.to_string();
            }
        }
        serde_json::to_string(&line).expect("a struct of strings and numbers serialises")
    }
}

/// What was read and found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Input lines (or rows), each owed one results row.
    pub input_lines: u64,
    /// Of those, invalid ones (owed an error row).
    pub invalid_lines: u64,
    pub rows: u64,
    pub files: usize,
    pub missing: u64,
    /// Input lines with more than one row.
    pub duplicated: u64,
    /// Rows that no input line owns.
    pub unexpected: u64,
    /// Of `files`, those that cannot be read (their rows are not in `rows`).
    pub damaged: usize,
    /// Of `files`, parts of a shard layout other than the dataset's main one.
    pub other_layout: usize,
}

impl Summary {
    pub fn is_clean(&self) -> bool {
        self.missing == 0
            && self.duplicated == 0
            && self.unexpected == 0
            && self.damaged == 0
            && self.other_layout == 0
    }

    /// One line for standard error.
    pub fn render(&self) -> String {
        let owed = format!(
            "{} input lines ({} invalid)",
            self.input_lines, self.invalid_lines
        );
        self.render_owing(&owed, "every input line has exactly one row")
    }

    /// One line for standard error, of a later stage of a pipeline that reads stage `from`:
    /// what it owes is that stage's rows handed on to it.
    pub fn render_stage(&self, from: &str) -> String {
        let owed = format!(
            "{} rows of stage {from} passing its filter",
            self.input_lines
        );
        self.render_owing(&owed, "every passing row has exactly one row")
    }

    fn render_owing(&self, owed: &str, clean: &str) -> String {
        let verdict = if self.is_clean() {
            clean
        } else {
            "NOT complete"
        };
        let files = if self.files == 1 { "file" } else { "files" };
        let damaged = match (self.damaged, self.other_layout) {
            (0, 0) => String::new(),
            (damaged, 0) => format!(" ({damaged} damaged, not read)"),
            (0, other) => format!(" ({other} of another shard layout)"),
            (damaged, other) => {
                format!(" ({damaged} damaged, not read; {other} of another shard layout)")
            }
        };
        format!(
            "{owed}, {} rows in {} {files}{damaged}: {} missing, {} duplicated, {} unexpected; {verdict}.",
            self.rows, self.files, self.missing, self.duplicated, self.unexpected
        )
    }
}
