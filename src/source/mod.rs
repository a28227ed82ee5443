//! Sources: where requests come from. A source runs on its own thread (parsing JSON is CPU work
//! that should not sit on the async runtime) and hands [`SourceItem`]s to the stage through a
//! bounded channel, so memory stays flat however long the input is and the first result can be
//! written long before the input ends.

pub mod jsonl;

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;

use tokio::sync::mpsc;

use crate::error::Error;
use crate::record::{DoneSet, SourceItem};
use jsonl::{LineParser, LineReader};

const READ_BUFFER_BYTES: usize = 256 * 1024;

/// Where input lines are read from.
#[derive(Debug, Clone)]
pub enum Input {
    Stdin,
    File(PathBuf),
    /// Text compiled into the binary (the demo's sample batch).
    Embedded(&'static str),
}

impl Input {
    /// `-` means standard input, as in most Unix tools.
    pub fn from_arg(arg: Option<PathBuf>) -> Input {
        match arg {
            Some(path) if path.as_os_str() != "-" => Input::File(path),
            _ => Input::Stdin,
        }
    }

    pub fn name(&self) -> String {
        match self {
            Input::Stdin => "<stdin>".into(),
            Input::File(path) => path.display().to_string(),
            Input::Embedded(_) => "<built-in sample>".into(),
        }
    }
}

/// How input lines become requests.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Fills or replaces `body.model` on every line.
    pub model_override: Option<String>,
    /// Longer lines are refused (their bytes are skipped, never held).
    pub max_line_bytes: usize,
    /// Lines an earlier run finished (on resume): skipped without output.
    pub done: Option<Arc<DoneSet>>,
}

/// What the source saw, once it has ended.
#[derive(Debug, Clone, Copy, Default)]
pub struct SourceSummary {
    /// Non-blank lines read.
    pub lines: u64,
    /// Lines skipped because an earlier run finished them.
    pub skipped_done: u64,
}

/// An input that has been opened but not read.
pub struct OpenedInput {
    input: Input,
    file: Option<File>,
}

/// Opens the input, so that a missing file fails before anything else is started or created.
pub fn open(input: Input) -> Result<OpenedInput, Error> {
    let file = match &input {
        Input::File(path) => Some(File::open(path).map_err(|source| Error::OpenInput {
            path: path.clone(),
            source,
        })?),
        Input::Stdin | Input::Embedded(_) => None,
    };
    Ok(OpenedInput { input, file })
}

/// Reads the input on a new thread. The thread stops early, without error, when the receiver
/// is dropped.
pub fn spawn(
    opened: OpenedInput,
    options: SourceOptions,
    items: mpsc::Sender<SourceItem>,
) -> Result<thread::JoinHandle<Result<SourceSummary, Error>>, Error> {
    let OpenedInput { input, file } = opened;
    let name = input.name();
    let handle = thread::Builder::new()
        .name("batchflow-source".into())
        .spawn(move || {
            let reader: Box<dyn BufRead> = match (input, file) {
                (Input::Embedded(text), _) => Box::new(text.as_bytes()),
                (_, Some(file)) => Box::new(BufReader::with_capacity(READ_BUFFER_BYTES, file)),
                (_, None) => Box::new(BufReader::with_capacity(READ_BUFFER_BYTES, io::stdin())),
            };
            read_lines(reader, &name, options, &items)
        })
        .map_err(|error| Error::Internal(format!("cannot start the input thread: {error}")))?;
    Ok(handle)
}

fn read_lines(
    reader: Box<dyn BufRead>,
    name: &str,
    options: SourceOptions,
    items: &mpsc::Sender<SourceItem>,
) -> Result<SourceSummary, Error> {
    let mut lines = LineReader::new(reader, options.max_line_bytes);
    let mut parser = LineParser::new(options.model_override.clone());
    let mut summary = SourceSummary::default();
    loop {
        let raw = match lines.next_line() {
            Ok(Some(raw)) => raw,
            Ok(None) => return Ok(summary),
            Err(source) => {
                return Err(Error::ReadInput {
                    name: name.to_owned(),
                    line: lines.line_number(),
                    source,
                });
            }
        };
        let Some(item) = parser.parse(raw) else {
            continue;
        };
        summary.lines += 1;
        if options
            .done
            .as_deref()
            .is_some_and(|done| is_done(done, &item))
        {
            summary.skipped_done += 1;
            continue;
        }
        if let SourceItem::Invalid(invalid) = &item {
            tracing::warn!("Skipping invalid input: {}.", invalid.message);
        }
        if items.blocking_send(item).is_err() {
            return Ok(summary);
        }
    }
}

fn is_done(done: &DoneSet, item: &SourceItem) -> bool {
    match item {
        SourceItem::Request(request) => done.ids.contains(&jsonl::id_hash(&request.custom_id)),
        SourceItem::Invalid(invalid) => done.invalid_lines.contains(&invalid.line),
    }
}
