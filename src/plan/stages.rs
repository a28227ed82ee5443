//! The plan of a pipeline of stages: the first stage is probed and projected like any
//! pipeline; a stage that reads it gets as many requests as the probe's answers that pass its
//! filter suggest, sent at the probe's rate. A later stage's own requests are not probed (the
//! rows it would read exist only once the first stage answered them), so its time is an
//! estimate at the first stage's pace, said as such.

use std::fs::File;
use std::path::Path;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;

use crate::error::Error;
use crate::filter::Filter;
use crate::handoff::{self, Handoff};

/// The stages that read the first stage's rows, as the plan needs them.
#[derive(Debug, Clone)]
pub struct LaterStages {
    /// How the first stage's rows become the records they read.
    pub first: Handoff,
    pub stages: Vec<LaterStage>,
}

#[derive(Debug, Clone)]
pub struct LaterStage {
    pub name: String,
    /// What it reads, as the run says it (`screen where fit != 'weak'`).
    pub reads: String,
    pub filter: Option<Filter>,
}

/// What the plan projects for a later stage.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StageProjection {
    pub name: String,
    pub reads: String,
    /// The probe's successful answers, and those the stage's filter passes.
    pub probe_answers: u64,
    pub probe_passing: u64,
    /// The first stage's requests times the share that passed.
    pub requests: u64,
    /// Those requests at the probe's rate.
    pub wall_secs: f64,
}

/// Projects each later stage from the probe's results (`probe_results`, the first stage's rows
/// the probe wrote) over `first_requests` requests of the first stage at `rate` a second.
pub fn project(
    probe_results: &Path,
    first_requests: u64,
    rate: f64,
    later: &LaterStages,
) -> Result<Vec<StageProjection>, Error> {
    let unreadable = |error: &dyn std::fmt::Display| {
        Error::Internal(format!(
            "cannot read the probe's results {}: {error}",
            probe_results.display()
        ))
    };
    let wanted = later.first.columns_read();
    let file = File::open(probe_results).map_err(|error| unreadable(&error))?;
    let batches = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|builder| {
            let projection = handoff::projection(&builder, &wanted);
            builder.with_projection(projection).build()
        })
        .map_err(|error| unreadable(&error))?;
    // The probe's successful answers, and for each stage those its filter passes.
    let mut answers = 0u64;
    let mut passing = vec![0u64; later.stages.len()];
    for batch in batches {
        let batch = batch.map_err(|error| unreadable(&error))?;
        let rows = handoff::records(&batch).map_err(|error| unreadable(&error))?;
        for record in rows
            .into_iter()
            .filter_map(|row| later.first.handed_on(row))
        {
            answers += 1;
            for (stage, passing) in later.stages.iter().zip(passing.iter_mut()) {
                if stage
                    .filter
                    .as_ref()
                    .is_none_or(|filter| filter.matches(&record))
                {
                    *passing += 1;
                }
            }
        }
    }
    Ok(later
        .stages
        .iter()
        .zip(passing)
        .map(|(stage, passing)| {
            let share = passing as f64 / answers.max(1) as f64;
            let requests = (share * first_requests as f64).round() as u64;
            StageProjection {
                name: stage.name.clone(),
                reads: stage.reads.clone(),
                probe_answers: answers,
                probe_passing: passing,
                requests,
                wall_secs: match rate > 0.0 {
                    true => requests as f64 / rate,
                    false => f64::INFINITY,
                },
            }
        })
        .collect())
}
