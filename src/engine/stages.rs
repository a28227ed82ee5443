//! A pipeline of stages run as one: every stage is a run of its own (its source, stage and
//! sink, its results file, fingerprint and resume), all started before any sends, then driven
//! together on one budget of server slots (a shared concurrency limit).
//!
//! A later stage reads an earlier one through a pipe: a follower thread reads the rows the
//! earlier stage has published (its results file at each checkpoint, a whole file renamed over
//! the last), keeps the successful ones that pass the filter, and writes each as a JSONL record
//! keyed by its custom_id. So a row reaches the next stage one checkpoint after it was
//! written, and only once it is durable: after a crash at any instant, the earlier stage's
//! file holds every row a later stage has, and resuming reads it again from its first row,
//! the later stage skipping what its own results hold. Each stage's rows are exactly once.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio::sync::watch;

use super::{RunConfig, RunReport, drive, start};
use crate::error::Error;
use crate::filter::Filter;
use crate::handoff::{self, Handoff};
use crate::metrics::{MetricsListener, RunWatch};
use crate::shutdown::Shutdown;
use crate::sink::dataset::{self, PartOwner};
use crate::sink::parquet::{OutputMode, PublishState, Published};
use crate::source::{Input, PipeInput};
use crate::stage::SharedLimit;
use crate::stage::limit::ConcurrencyLimit;

/// The longest a stage that others read waits between checkpoints: its rows reach the next
/// stage no later than this.
pub const FOLLOWED_CHECKPOINT: Duration = Duration::from_secs(2);

/// One stage of a pipeline, resolved into a run.
pub struct StageRun {
    pub name: String,
    pub config: RunConfig,
    /// The stage whose rows this one reads (its index), and which of them.
    pub from: Option<(usize, Option<Filter>)>,
    /// How its rows become the records of the stages that read it.
    pub handoff: Handoff,
}

/// How one stage ended.
pub struct StageEnd {
    pub name: String,
    pub report: RunReport,
}

/// Why a later stage's records stopped coming.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("cannot read the rows of stage {stage:?} in {path}: {reason}")]
    Read {
        stage: String,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot start the reader of stage {stage:?}: {cause}")]
    Thread { stage: String, cause: io::Error },
}

/// What a follower needs to know of the stage it reads.
struct Followed {
    /// How its rows become records.
    handoff: Handoff,
    /// Its results file, or its dataset folder with the parts of `dataset`'s shard.
    path: PathBuf,
    dataset: Option<PartOwner>,
}

/// Runs every stage to its end. Errors before the first request of any stage come back as
/// `Err`, as from [`super::run`]; after that each stage's report says how it ended.
pub async fn run_stages(
    mut stages: Vec<StageRun>,
    shutdown: Shutdown,
) -> Result<Vec<StageEnd>, Error> {
    let started_at = Instant::now();
    let metrics = match stages.first().and_then(|stage| stage.config.metrics) {
        Some(metrics) => Some(MetricsListener::bind(metrics).await?),
        None => None,
    };
    let limit = shared_limit(stages.first().map(|stage| &stage.config));
    // Who reads whom: a stage read by another is told of its checkpoints.
    let mut published: Vec<Option<Published>> = vec![None; stages.len()];
    for stage in &stages {
        if let Some((from, _)) = stage.from {
            published[from].get_or_insert_with(Published::new);
        }
    }
    let names: Vec<String> = stages.iter().map(|stage| stage.name.clone()).collect();
    let mut pipes: Vec<Option<io::PipeWriter>> = Vec::new();
    for (index, stage) in stages.iter_mut().enumerate() {
        stage.config.stage.shared_limit = Some(limit.clone());
        stage.config.progress.stage = Some(stage.name.clone());
        stage.config.metrics = None;
        if metrics.is_some() {
            stage.config.watch = Some(RunWatch::new());
        }
        if let (Some(publish), Some(results)) = (&published[index], &mut stage.config.results) {
            if results.remote.is_some() {
                return Err(Error::Internal(format!(
                    "stage {:?} writes to object storage, which a later stage cannot read as it grows yet: write the stages' results to a local folder",
                    stage.name
                )));
            }
            results.published = Some(publish.clone());
            results.checkpoint_interval = results.checkpoint_interval.min(FOLLOWED_CHECKPOINT);
        }
        pipes.push(match &stage.from {
            Some((from, _)) => {
                let (input, writer) = pipe_from(&names[*from])?;
                stage.config.input = input;
                Some(writer)
            }
            None => None,
        });
    }
    let started = start_all(&stages, &names, &mut pipes, &shutdown).await?;
    let mut followers = Vec::new();
    for (index, writer) in pipes.into_iter().enumerate() {
        let (Some(writer), Some((from, filter))) = (writer, stages[index].from.clone()) else {
            continue;
        };
        let results = started[from]
            .config
            .results
            .as_ref()
            .ok_or_else(|| Error::Internal("a followed stage writes no results".into()))?;
        let followed = Followed {
            handoff: stages[from].handoff.clone(),
            path: results.path.clone(),
            dataset: results.dataset,
        };
        let changes = published[from]
            .as_ref()
            .map(Published::subscribe)
            .ok_or_else(|| Error::Internal("a followed stage is not published".into()))?;
        followers.push((
            index,
            spawn_follower(
                followed,
                filter,
                changes,
                writer,
                tokio::runtime::Handle::current(),
            )?,
        ));
    }
    // One endpoint for every stage, each labelled with its name.
    let mut endpoint = metrics.map(|listener| {
        listener.serve_stages(
            started
                .iter()
                .zip(&names)
                .filter_map(|(begun, name)| Some((name.clone(), begun.config.watch.clone()?)))
                .collect(),
        )
    });
    let runs = started.into_iter().enumerate().map(|(index, begun)| {
        let shutdown = shutdown.clone();
        let publish = published[index].clone();
        async move {
            let report = drive(begun, started_at, shutdown, None).await;
            if let Some(publish) = publish {
                publish.end();
            }
            report
        }
    });
    let reports = join_all(runs).await;
    // A stage whose records stopped coming because its reader failed did not read all it
    // was owed: that is its run's error (its rows are kept, and --resume reads again).
    let mut unread: Vec<Option<String>> = vec![None; reports.len()];
    for (index, follower) in followers {
        unread[index] = match tokio::task::spawn_blocking(move || follower.join()).await {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(error))) => Some(error.to_string()),
            Ok(Err(_)) | Err(_) => Some("the reader of its input panicked".into()),
        };
    }
    let mut ends = Vec::with_capacity(reports.len());
    for ((name, report), unread) in names.into_iter().zip(reports).zip(unread) {
        let mut report = report?;
        if let Some(why) = unread {
            report.fatal.get_or_insert(Error::Internal(format!(
                "{why}; its rows so far are kept: run again with --resume"
            )));
        }
        // The caller lingers on the endpoint through the first stage's report.
        report.metrics = report.metrics.or_else(|| endpoint.take());
        ends.push(StageEnd { name, report });
    }
    Ok(ends)
}

/// Starts every stage in order, before any sends (a stage's start prepares its results, which
/// the stages after it read). A later stage whose settings changed starts again from nothing
/// when --allow-config-change is given, and so do the stages after it: their rows are not
/// mixed with rows of other settings. `pipes` gets a new writer for a stage started again.
async fn start_all(
    stages: &[StageRun],
    names: &[String],
    pipes: &mut [Option<io::PipeWriter>],
    shutdown: &Shutdown,
) -> Result<Vec<start::Started>, Error> {
    let mut started = Vec::with_capacity(stages.len());
    let mut redone = vec![false; stages.len()];
    for (index, stage) in stages.iter().enumerate() {
        let mut config = stage.config.clone();
        let upstream_redone = stage.from.as_ref().is_some_and(|(from, _)| redone[*from]);
        if upstream_redone {
            redo(&mut config);
        }
        // A later stage's rows are not mixed with rows of other settings: with
        // --allow-config-change a change makes them again, so it must be seen first.
        let allowed = allows_config_change(&config);
        if let Some(results) = config.results.as_mut().filter(|_| stage.from.is_some()) {
            results.allow_config_change = false;
        }
        let first = start::start(config.clone(), None, shutdown.clone()).await;
        let begun = match first {
            Err(Error::Results(crate::sink::checkpoint::ResultsError::ConfigChanged {
                changes,
                ..
            })) if stage.from.is_some() && allowed => {
                tracing::warn!(
                    stage = %stage.name,
                    "Stage {:?} changed ({changes}): its rows are made again.",
                    stage.name
                );
                redone[index] = true;
                redo(&mut config);
                // The first start took the pipe's reading end with it.
                if let Some((from, _)) = &stage.from {
                    let (input, writer) = pipe_from(&names[*from])?;
                    config.input = input;
                    pipes[index] = Some(writer);
                }
                start::start(config, None, shutdown.clone()).await?
            }
            other => {
                redone[index] = upstream_redone;
                other?
            }
        };
        started.push(begun);
    }
    Ok(started)
}

/// One limit for every stage, sized as the first stage's workers would size its own: the
/// server's slots are one budget, whichever stage a request belongs to.
fn shared_limit(first: Option<&RunConfig>) -> SharedLimit {
    let (workers, adaptive_max, backends) = first.map_or((1, None, 1), |config| {
        (
            config.stage.workers,
            config.stage.adaptive_max,
            config.backends.len().max(1),
        )
    });
    let workers = workers * backends;
    SharedLimit(Arc::new(match adaptive_max {
        Some(max) => ConcurrencyLimit::adaptive(workers, max * backends),
        None => ConcurrencyLimit::fixed(workers),
    }))
}

/// A later stage's input: a pipe its follower writes the rows of stage `from` into.
fn pipe_from(from: &str) -> Result<(Input, io::PipeWriter), Error> {
    let (reader, writer) = io::pipe().map_err(|error| {
        Error::Internal(format!("cannot make the pipe between stages: {error}"))
    })?;
    let input = Input::Pipe(PipeInput::new(
        format!("the rows of stage {from:?}"),
        reader,
    ));
    Ok((input, writer))
}

fn allows_config_change(config: &RunConfig) -> bool {
    config
        .results
        .as_ref()
        .is_some_and(|results| results.allow_config_change)
}

/// Makes a stage start its results again: its settings changed, or those of a stage it reads.
fn redo(config: &mut RunConfig) {
    if let Some(results) = &mut config.results {
        results.mode = OutputMode::Overwrite;
    }
    config.existing_outputs = OutputMode::Overwrite;
}

/// Starts the thread that hands a later stage the rows of `followed` passing `filter`, as
/// JSONL records written into `pipe`, until the followed stage has ended and its last rows
/// are written (then the pipe closes, which ends the later stage's input).
fn spawn_follower(
    followed: Followed,
    filter: Option<Filter>,
    changes: watch::Receiver<PublishState>,
    pipe: io::PipeWriter,
    runtime: tokio::runtime::Handle,
) -> Result<std::thread::JoinHandle<Result<(), FollowError>>, Error> {
    let stage = followed.handoff.stage.clone();
    std::thread::Builder::new()
        .name("batchflow-follow".into())
        .spawn(move || follow(&followed, filter.as_ref(), changes, pipe, &runtime))
        .map_err(|cause| Error::Internal(FollowError::Thread { stage, cause }.to_string()))
}

fn follow(
    followed: &Followed,
    filter: Option<&Filter>,
    mut changes: watch::Receiver<PublishState>,
    pipe: io::PipeWriter,
    runtime: &tokio::runtime::Handle,
) -> Result<(), FollowError> {
    let mut out = BufWriter::new(pipe);
    // Row groups already read, by results file: one file, or each part of a dataset (a
    // sealed part keeps its row groups; only the last one grows).
    let mut read: HashMap<PathBuf, usize> = HashMap::new();
    let mut last_round = false;
    loop {
        // The state is read before the file: once it says the writer ended, the file read
        // after it holds every row there will be.
        let state = *changes.borrow_and_update();
        match read_published(followed, filter, &mut read, &mut out) {
            Ok(()) => {}
            // The later stage stopped reading (its run ended early): nothing to hand on.
            Err(ReadStop::Closed) => return Ok(()),
            Err(ReadStop::Failed(reason)) => {
                return Err(FollowError::Read {
                    stage: followed.handoff.stage.clone(),
                    path: followed.path.clone(),
                    reason,
                });
            }
        }
        if out.flush().is_err() || state.ended || last_round {
            return Ok(());
        }
        // No one can tell of a change any more: one last read takes whatever is there.
        last_round = runtime.block_on(changes.changed()).is_err();
    }
}

enum ReadStop {
    /// The pipe's reader is gone.
    Closed,
    Failed(String),
}

/// Writes the passing rows that the followed stage published since the last call: the new row
/// groups of its file, or of each part of its dataset.
fn read_published(
    followed: &Followed,
    filter: Option<&Filter>,
    read: &mut HashMap<PathBuf, usize>,
    out: &mut impl Write,
) -> Result<(), ReadStop> {
    let files = match followed.dataset {
        None => vec![followed.path.clone()],
        Some(owner) => dataset::list_parts(&followed.path, owner)
            .map_err(|error| ReadStop::Failed(error.to_string()))?
            .into_iter()
            .map(|part| part.path)
            .collect(),
    };
    for file in files {
        let first_group = read.get(&file).copied().unwrap_or(0);
        let groups = read_new_rows(&file, followed, filter, first_group, out)?;
        read.insert(file, groups);
    }
    Ok(())
}

/// Writes the passing rows of the row groups from `first_group` on, of `path` as now
/// published; returns the row groups it has, where the next read starts.
fn read_new_rows(
    path: &Path,
    followed: &Followed,
    filter: Option<&Filter>,
    first_group: usize,
    out: &mut impl Write,
) -> Result<usize, ReadStop> {
    let failed = |error: &dyn std::fmt::Display| ReadStop::Failed(error.to_string());
    let file = match File::open(path) {
        Ok(file) => file,
        // Not made yet: the stage has published nothing.
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(first_group),
        Err(error) => return Err(failed(&error)),
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| failed(&e))?;
    let groups = builder.metadata().num_row_groups();
    if groups <= first_group {
        return Ok(groups);
    }
    let wanted = followed.handoff.columns_read();
    let projection = handoff::projection(&builder, &wanted);
    let batches = builder
        .with_projection(projection)
        .with_row_groups((first_group..groups).collect())
        .build()
        .map_err(|e| failed(&e))?;
    for batch in batches {
        let batch = batch.map_err(|e| failed(&e))?;
        for record in handoff::records(&batch).map_err(|e| failed(&e))? {
            let Some(record) = followed.handoff.handed_on(record) else {
                continue;
            };
            if filter.is_some_and(|filter| !filter.matches(&record)) {
                continue;
            }
            let line = serde_json::to_vec(&record).map_err(|e| failed(&e))?;
            let written = out.write_all(&line).and_then(|()| out.write_all(b"\n"));
            if let Err(error) = written {
                return Err(match error.kind() {
                    io::ErrorKind::BrokenPipe => ReadStop::Closed,
                    _ => failed(&error),
                });
            }
        }
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn followed() -> Followed {
        Followed {
            handoff: Handoff {
                stage: "screen".into(),
                carried: vec!["name".into()],
                output_fields: vec!["fit".into(), "score".into()],
            },
            path: PathBuf::from("unused"),
            dataset: None,
        }
    }

    #[test]
    fn a_follower_that_cannot_read_the_stage_it_follows_says_so_rather_than_ending_its_input() {
        let folder = tempfile::tempdir().expect("temp dir");
        let path = folder.path().join("screen.parquet");
        std::fs::write(&path, b"not parquet at all").expect("write");
        let published = Published::new();
        published.end();
        let (_reader, writer) = io::pipe().expect("a pipe");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let followed = Followed {
            path: path.clone(),
            ..followed()
        };
        let ended = follow(
            &followed,
            None,
            published.subscribe(),
            writer,
            runtime.handle(),
        );
        match ended {
            Err(FollowError::Read {
                stage, path: read, ..
            }) => {
                assert_eq!((stage.as_str(), read), ("screen", path));
            }
            other => panic!("a read error, not {other:?}"),
        }
    }

    #[test]
    fn rows_are_read_from_the_row_group_given_on_and_filtered() {
        use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
        let folder = tempfile::tempdir().expect("temp dir");
        let path = folder.path().join("screen.parquet");
        let batch = |ids: [&str; 2], scores: [i64; 2]| {
            RecordBatch::try_from_iter(vec![
                (
                    "custom_id",
                    Arc::new(StringArray::from(ids.to_vec())) as ArrayRef,
                ),
                (
                    "status",
                    Arc::new(StringArray::from(vec!["ok", "ok"])) as ArrayRef,
                ),
                (
                    "content",
                    Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef,
                ),
                (
                    "name",
                    Arc::new(StringArray::from(vec!["n", "m"])) as ArrayRef,
                ),
                (
                    "fit",
                    Arc::new(StringArray::from(vec!["weak", "strong"])) as ArrayRef,
                ),
                (
                    "score",
                    Arc::new(Int64Array::from(scores.to_vec())) as ArrayRef,
                ),
            ])
            .expect("a batch")
        };
        let first = batch(["a", "b"], [1, 9]);
        let file = File::create(&path).expect("create");
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(file, first.schema(), None).expect("writer");
        writer.write(&first).expect("write");
        writer.flush().expect("row group");
        writer.write(&batch(["c", "d"], [7, 2])).expect("write");
        writer.close().expect("close");
        let filter = Filter::parse("score >= 7").expect("a filter");
        let mut out = Vec::new();
        let groups = read_new_rows(&path, &followed(), Some(&filter), 1, &mut out)
            .unwrap_or_else(|_| panic!("read"));
        assert_eq!(groups, 2);
        let ids: Vec<String> = String::from_utf8(out)
            .expect("text")
            .lines()
            .map(|line| {
                let record: serde_json::Value = serde_json::from_str(line).expect("json");
                record["custom_id"].as_str().expect("an id").to_owned()
            })
            .collect();
        assert_eq!(ids, ["c"]);
    }
}
