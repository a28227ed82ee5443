//! What a run does with results that already exist: the one choice that the results file, its
//! dataset parts, their generations and the JSONL and error files all follow.

/// What to do with an existing file at the output path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// Refuse to touch an existing file.
    New,
    /// Replace an existing file.
    Overwrite,
    /// Continue an existing file; with `retry_errors`, drop its error rows and redo them; with
    /// `prune`, once the whole input was read, drop the rows of lines it no longer has.
    Resume { retry_errors: bool, prune: bool },
}
