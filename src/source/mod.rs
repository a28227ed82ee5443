//! Sources: where requests come from. In a run a source has its own thread (parsing JSON is CPU
//! work that should not sit on the async runtime) and hands [`SourceItem`]s to the stage through
//! a bounded channel ([`spawn`]), so memory stays flat however long the input is and the first
//! result can be written long before the input ends. A reader that only looks at the items
//! (`verify`) takes them on its own thread instead ([`read`]).
//!
//! Each format turns its input into items (JSONL line by line through `lines`, Parquet row by
//! row through `parquet`), both checked by [`request::RequestParser`]; `template` shapes records
//! into requests first. Counting, the resume filter and sending are shared here.

pub mod lines;
pub mod parquet;
pub mod request;
pub mod template;

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;

use tokio::sync::mpsc;

use crate::item::{DoneSet, SourceItem};
use crate::shutdown::Shutdown;
use lines::LineReader;
use parquet::ParquetRows;
use request::RequestParser;

const READ_BUFFER_BYTES: usize = 256 * 1024;

/// Why the input cannot be read. Every message names the input (and the line, row or column).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot open input {path}: {cause}")]
    OpenInput { path: PathBuf, cause: io::Error },

    #[error("reading input {name} failed after line or row {line}: {cause}")]
    ReadInput {
        name: String,
        line: u64,
        cause: io::Error,
    },

    #[error("cannot read input {path} as Parquet: {reason}")]
    ParquetInput { path: PathBuf, reason: String },

    #[error(
        "input {path} lacks the column(s) {missing} that every request needs; its columns are: {found}"
    )]
    ParquetColumns {
        path: PathBuf,
        missing: String,
        found: String,
    },

    #[error("input {path}: column {column} cannot be read as JSON: {reason}")]
    ParquetColumnType {
        path: PathBuf,
        column: String,
        reason: String,
    },

    #[error("cannot start the input thread: {0}")]
    Thread(io::Error),
}

/// Where input lines are read from.
#[derive(Debug, Clone)]
pub enum Input {
    Stdin,
    File(PathBuf),
    /// Text held in memory: the demo's built-in sample, or `tune`'s sample of an input.
    Text(Arc<str>),
    /// JSONL records written by another part of the run: an earlier stage's rows for a later
    /// stage of a pipeline (`engine::stages`).
    Pipe(PipeInput),
}

/// The reading end of a pipe, taken by the one run that opens it.
#[derive(Clone)]
pub struct PipeInput {
    /// For messages: what writes into the pipe.
    pub name: String,
    reader: Arc<std::sync::Mutex<Option<io::PipeReader>>>,
}

impl PipeInput {
    pub fn new(name: String, reader: io::PipeReader) -> PipeInput {
        PipeInput {
            name,
            reader: Arc::new(std::sync::Mutex::new(Some(reader))),
        }
    }

    fn take(&self) -> Option<io::PipeReader> {
        self.reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

impl std::fmt::Debug for PipeInput {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_tuple("PipeInput")
            .field(&self.name)
            .finish()
    }
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
            Input::Text(_) => "<text in memory>".into(),
            Input::Pipe(pipe) => pipe.name.clone(),
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
    /// Gather the done lines this input still has, in [`SourceSummary::matched`]
    /// (`--resume --prune` drops the others).
    pub track_done: bool,
    /// Pipelines over records: how each record becomes a request.
    pub records: Option<Arc<template::RecordShape>>,
    /// Process only this shard of the input.
    pub shard: Option<Shard>,
    /// Stop after this many items (`tune`'s sample of the real input).
    pub limit: Option<u64>,
    /// How the user sets the model for every line (`--model`, `request.model`), for messages.
    pub model_knob: String,
    /// Set on every request to Ollama's own API (`/api/…`), over the request's own: its
    /// `options` (key by key) and its `keep_alive`.
    pub ollama_options: Option<serde_json::Map<String, serde_json::Value>>,
    pub keep_alive: Option<serde_json::Value>,
    /// For a later stage of a pipeline: the stage its records come from and its filter
    /// (`screen where fit != 'weak'`), which the rows depend on as much as on the template.
    pub upstream: Option<String>,
    /// Log a warning for each invalid line: a run writes it as an error line and says so;
    /// `verify` reads the input only to know what the results owe.
    pub log_invalid: bool,
}

/// One of `count` disjoint parts of an input, chosen by a hash of the custom_id that is the
/// same on every machine and build (xxh3), so several machines can split one input without
/// talking to each other. Invalid lines, which may have no id, go by line number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    /// Reads `i/n` with `0 <= i < n`.
    pub fn parse(text: &str) -> Result<Shard, String> {
        let (index, count) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not of the form i/n, such as 0/4"))?;
        let index: u64 = index
            .trim()
            .parse()
            .map_err(|_| format!("{text:?}: the shard index is not a number"))?;
        let count: u64 = count
            .trim()
            .parse()
            .map_err(|_| format!("{text:?}: the shard count is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!(
                "{text:?}: the index must be at least 0 and below the count"
            ));
        }
        Ok(Shard { index, count })
    }

    pub fn holds(&self, item: &SourceItem) -> bool {
        let key = match item {
            SourceItem::Request(request) => {
                xxhash_rust::xxh3::xxh3_64(request.custom_id.as_bytes())
            }
            SourceItem::Invalid(invalid) => invalid.line,
        };
        key % self.count == self.index
    }
}

/// What the source saw, once it has ended.
#[derive(Debug, Default)]
pub struct SourceSummary {
    /// Non-blank lines (or Parquet rows) read, of this shard only.
    pub lines: u64,
    /// Lines skipped because an earlier run finished them.
    pub skipped_done: u64,
    /// Items handed to the stage.
    pub sent: u64,
    /// Reading stopped at [`SourceOptions::limit`], before the input's end.
    pub reached_limit: bool,
    /// With [`SourceOptions::track_done`]: the skipped lines' keys, as the done set has them.
    pub matched: Option<DoneSet>,
}

/// An input that has been opened but not read.
pub struct OpenedInput {
    name: String,
    reader: Reader,
}

/// How an opened input is read; a Parquet input has already had its footer and columns checked.
enum Reader {
    Stdin,
    Text(Arc<str>),
    Jsonl(File),
    Parquet(ParquetRows),
    Pipe(io::PipeReader),
}

/// Opens the input, so that a missing file, a damaged Parquet footer or a missing column fails
/// before anything else is started or created. A file is Parquet when its name ends in
/// `.parquet` or it starts with Parquet's magic bytes; anything else, and standard input, is
/// JSONL.
///
/// `record_columns` is set for a pipeline reading records: a Parquet input then must have, and
/// is read for, those columns instead of the request columns.
pub fn open(input: Input, record_columns: Option<&[&str]>) -> Result<OpenedInput, SourceError> {
    let name = input.name();
    let reader = match input {
        Input::Stdin => Reader::Stdin,
        Input::Text(text) => Reader::Text(text),
        Input::Pipe(pipe) => match pipe.take() {
            Some(reader) => Reader::Pipe(reader),
            None => {
                return Err(SourceError::OpenInput {
                    path: PathBuf::from(&pipe.name),
                    cause: io::Error::other("its pipe was opened already"),
                });
            }
        },
        Input::File(path) => {
            let open_error = |cause| SourceError::OpenInput {
                path: path.clone(),
                cause,
            };
            let mut file = File::open(&path).map_err(open_error)?;
            if file.metadata().is_ok_and(|metadata| metadata.is_dir()) {
                return Err(open_error(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    "it is a directory",
                )));
            }
            if parquet::is_parquet(&path, &mut file).map_err(open_error)? {
                match record_columns {
                    Some(columns) => {
                        Reader::Parquet(ParquetRows::open_columns(&path, file, columns)?)
                    }
                    None => Reader::Parquet(ParquetRows::open(&path, file)?),
                }
            } else {
                Reader::Jsonl(file)
            }
        }
    };
    Ok(OpenedInput { name, reader })
}

/// How many items an input holds, as far as can be known without reading it.
pub enum InputSize {
    Known(u64),
    /// A JSONL file: its lines can be counted on the side (see [`count_lines`]).
    Countable(File),
    /// Standard input.
    Unknown,
}

impl OpenedInput {
    pub fn size(&self) -> InputSize {
        match &self.reader {
            Reader::Stdin | Reader::Pipe(_) => InputSize::Unknown,
            Reader::Text(text) => {
                InputSize::Known(text.lines().filter(|line| !line.trim().is_empty()).count() as u64)
            }
            Reader::Parquet(rows) => InputSize::Known(rows.total_rows()),
            Reader::Jsonl(file) => file
                .try_clone()
                .map_or(InputSize::Unknown, InputSize::Countable),
        }
    }
}

/// Lets a shared string be read as bytes.
struct TextBytes(Arc<str>);

impl AsRef<[u8]> for TextBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Counts the lines of a file with positioned reads, so it can run beside the reader of the
/// same file without moving its offset. Blank lines count too: the figure is for progress only.
pub fn count_lines(file: &File) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut buffer = vec![0u8; 1 << 20];
    let (mut offset, mut lines, mut last) = (0u64, 0u64, b'\n');
    loop {
        let read = match file.read_at(&mut buffer, offset) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        lines += memchr::memchr_iter(b'\n', &buffer[..read]).count() as u64;
        last = buffer[read - 1];
        offset += read as u64;
    }
    Ok(lines + u64::from(last != b'\n'))
}

/// Opens the input for `options`: a pipeline over records reads a Parquet input for the
/// record's columns, anything else for the request columns.
pub fn open_for(input: Input, options: &SourceOptions) -> Result<OpenedInput, SourceError> {
    let record_columns = options
        .records
        .as_deref()
        .map(template::RecordShape::required_columns);
    open(input, record_columns.as_deref())
}

impl SourceOptions {
    /// The model every request names up front (`--model`, or a pipeline's record model), if any.
    pub fn named_model(&self) -> Option<&str> {
        self.model_override
            .as_deref()
            .or(self.records.as_deref().map(|shape| shape.model.as_str()))
    }
}

/// Reads the input on a new thread. The thread stops early, without error, when the receiver
/// is dropped. A read error stops `shutdown` before the input ends, so the run is not taken
/// for complete.
pub fn spawn(
    opened: OpenedInput,
    options: SourceOptions,
    items: mpsc::Sender<SourceItem>,
    shutdown: Shutdown,
) -> Result<thread::JoinHandle<Result<SourceSummary, SourceError>>, SourceError> {
    let handle = thread::Builder::new()
        .name("batchflow-source".into())
        .spawn(move || {
            let mut room = BatchedSender::new(&items);
            let result = read(opened, &options, |item| match room.send(item) {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            });
            if result.is_err() {
                shutdown.stop();
            }
            result
        })
        .map_err(SourceError::Thread)?;
    Ok(handle)
}

/// Reads the input on the calling thread, handing each item to `each` in input order, the way
/// [`spawn`] hands them to a run, until the input ends or `each` breaks. For a reader that
/// only looks at the items (`verify`), with no thread or channel between.
pub fn read(
    opened: OpenedInput,
    options: &SourceOptions,
    mut each: impl FnMut(SourceItem) -> ControlFlow<()>,
) -> Result<SourceSummary, SourceError> {
    let OpenedInput { name, reader } = opened;
    let buffered = |read: Box<dyn io::Read>| -> Box<dyn BufRead> {
        Box::new(BufReader::with_capacity(READ_BUFFER_BYTES, read))
    };
    let each = &mut each as &mut dyn FnMut(SourceItem) -> ControlFlow<()>;
    match reader {
        Reader::Parquet(rows) => read_rows(rows, options, each),
        Reader::Text(text) => read_lines(
            Box::new(io::Cursor::new(TextBytes(text))),
            &name,
            options,
            each,
        ),
        Reader::Jsonl(file) => read_lines(buffered(Box::new(file)), &name, options, each),
        Reader::Stdin => read_lines(buffered(Box::new(io::stdin())), &name, options, each),
        Reader::Pipe(pipe) => read_lines(buffered(Box::new(pipe)), &name, options, each),
    }
}

/// Where a source's items go; `Break` when no one takes them any more.
type Each<'a> = &'a mut dyn FnMut(SourceItem) -> ControlFlow<()>;

fn read_lines(
    reader: Box<dyn BufRead>,
    name: &str,
    options: &SourceOptions,
    each: Each<'_>,
) -> Result<SourceSummary, SourceError> {
    let mut lines = LineReader::new(reader, options.max_line_bytes);
    let mut parser = parser(options);
    forward(options, each, || {
        loop {
            let raw = match lines.next_line() {
                Ok(Some(raw)) => raw,
                Ok(None) => return Ok(None),
                Err(cause) => {
                    return Err(SourceError::ReadInput {
                        name: name.to_owned(),
                        line: lines.line_number(),
                        cause,
                    });
                }
            };
            if let Some(item) = parser.parse(raw) {
                return Ok(Some(item));
            }
        }
    })
}

fn read_rows(
    mut rows: ParquetRows,
    options: &SourceOptions,
    each: Each<'_>,
) -> Result<SourceSummary, SourceError> {
    let mut parser = parser(options).with_text_bodies();
    forward(options, each, || rows.next_item(&mut parser))
}

fn parser(options: &SourceOptions) -> RequestParser {
    let parser = RequestParser::new(options.model_override.clone())
        .with_model_knob(&options.model_knob)
        .with_ollama_overrides(options.ollama_options.clone(), options.keep_alive.clone());
    match &options.records {
        Some(shape) => parser.with_records(Arc::clone(shape)),
        None => parser,
    }
}

/// What every source does with its items, whatever the format: count them, skip those an
/// earlier run finished, log the invalid ones and hand on the rest, until `next` runs out or
/// `each` breaks.
fn forward(
    options: &SourceOptions,
    each: Each<'_>,
    mut next: impl FnMut() -> Result<Option<SourceItem>, SourceError>,
) -> Result<SourceSummary, SourceError> {
    let mut summary = SourceSummary {
        matched: options.track_done.then(DoneSet::default),
        ..SourceSummary::default()
    };
    loop {
        if options.limit.is_some_and(|limit| summary.sent >= limit) {
            summary.reached_limit = true;
            break;
        }
        let Some(item) = next()? else {
            break;
        };
        if options.shard.is_some_and(|shard| !shard.holds(&item)) {
            continue;
        }
        summary.lines += 1;
        if options
            .done
            .as_deref()
            .is_some_and(|done| is_done(done, &item))
        {
            summary.skipped_done += 1;
            if let Some(matched) = &mut summary.matched {
                match &item {
                    SourceItem::Request(request) => {
                        matched.ids.insert(crate::item::id_hash(&request.custom_id));
                    }
                    SourceItem::Invalid(invalid) => {
                        matched.invalid_lines.insert(invalid.line);
                    }
                }
            }
            continue;
        }
        if let SourceItem::Invalid(invalid) = &item
            && options.log_invalid
        {
            tracing::warn!(
                "Invalid input, written as an error line: {}.",
                invalid.message
            );
        }
        if each(item).is_break() {
            break;
        }
        summary.sent += 1;
    }
    Ok(summary)
}

/// Items sent per wait for room in the channel.
const SEND_BATCH: usize = 64;

/// Sends from this blocking thread, waiting for room [`SEND_BATCH`] slots at a time: when the
/// stage is the slower side (the usual case) it then wakes this thread once per batch instead
/// of once per item. Each item still enters the channel as soon as it is read, so an
/// interactive input is not held back.
struct BatchedSender<'a> {
    items: &'a mpsc::Sender<SourceItem>,
    room: Option<mpsc::PermitIterator<'a, SourceItem>>,
}

impl<'a> BatchedSender<'a> {
    fn new(items: &'a mpsc::Sender<SourceItem>) -> Self {
        BatchedSender { items, room: None }
    }

    /// Fails when the receiver is gone.
    fn send(&mut self, item: SourceItem) -> Result<(), mpsc::error::SendError<()>> {
        loop {
            // A reserved slot still takes an item after the stage has gone (and drops it), so
            // the stage's end is checked here, not left to the next reservation.
            if self.items.is_closed() {
                return Err(mpsc::error::SendError(()));
            }
            if let Some(permit) = self.room.as_mut().and_then(Iterator::next) {
                permit.send(item);
                return Ok(());
            }
            let batch = SEND_BATCH.min(self.items.max_capacity());
            self.room = Some(futures::executor::block_on(self.items.reserve_many(batch))?);
        }
    }
}

fn is_done(done: &DoneSet, item: &SourceItem) -> bool {
    match item {
        SourceItem::Request(request) => done.ids.contains(crate::item::id_hash(&request.custom_id)),
        SourceItem::Invalid(invalid) => done.invalid_lines.contains(&invalid.line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_partition() {
        assert_eq!(Shard::parse("1/4"), Ok(Shard { index: 1, count: 4 }));
        for bad in ["4/4", "1", "a/2", "0/0"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
        let shards: Vec<Shard> = (0..3).map(|index| Shard { index, count: 3 }).collect();
        for id in 0..300 {
            let item = SourceItem::Invalid(crate::item::InvalidLine {
                line: id,
                custom_id: None,
                code: crate::item::ErrorCode::InvalidJson,
                message: String::new(),
            });
            assert_eq!(shards.iter().filter(|shard| shard.holds(&item)).count(), 1);
        }
    }
}
