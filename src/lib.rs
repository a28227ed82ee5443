//! batchflow runs large batches of independent LLM requests against Ollama or any
//! OpenAI-compatible server, as fast as the server's parallel slots allow.
//!
//! ```text
//!   source thread            async runtime                 sink thread
//!  ┌──────────────┐  items  ┌─────────────────────┐ outcomes ┌──────────────┐
//!  │ JSONL lines  │ ──────▶ │ stage: N in flight, │ ───────▶ │ JSONL stdout │
//!  │ parse, check │ bounded │ retry with backoff  │ bounded  │ Parquet with │
//!  │ skip done    │ channel └──────────┬──────────┘ channel  │ checkpoints  │
//!  └──────────────┘                    │ HTTP                └──────────────┘
//!                                      ▼
//!                           backend: Ollama / OpenAI API
//! ```
//!
//! Module map:
//! - [`source`]: input to requests, on their own thread: JSONL lines (`source::jsonl`) or
//!   Parquet rows (`source::parquet`), both checked by the same parser.
//! - [`stage`]: the concurrent stage and its retry policy (`stage::retry`).
//! - [`backend`]: the `Backend` seam, the HTTP backend, failure classification, preflight.
//! - [`sink`]: output writers on their own thread: `sink::jsonl`, and `sink::parquet` with
//!   its crash-safe file format in `sink::checkpoint` and its columns in `sink::results`.
//! - [`status`]: the `status` command, reading a results file without changing it.
//! - [`tune`]: the `tune` command, measuring throughput at increasing worker counts.
//! - [`record`]: what flows between them: requests, invalid lines, outcomes.
//! - [`idset`]: the compact set of custom_id hashes behind duplicate detection and resume.
//! - [`reply`]: what is read from a server's answer (text, tokens, timings, embedding).
//! - [`schema`]: structured output: the JSON Schema subset that maps to typed columns.
//! - [`engine`]: wires one run together and reports how it ended.
//! - [`shutdown`]: signals to stop/abort, passed into the engine.
//! - [`cli`], [`config`], [`settings`]: flags and pipeline TOML files, and their resolution
//!   into a run's configuration; [`pipeline`]: the checks and dry run of a pipeline file.
//! - [`mock`]: an Ollama-compatible mock server for tests, benchmarks and dry runs.
//! - [`stats`], [`progress`], [`gpu`]: run figures, their display on stderr and in the
//!   `--stats` file, and GPU memory (NVML, Ollama's `/api/ps`).
//! - [`error`]: the error type and exit codes.

pub mod backend;
pub mod config;
pub mod engine;
pub mod error;
pub mod gpu;
pub mod idset;
pub mod mock;
pub mod options;
pub mod paths;
pub mod pipeline;
pub mod progress;
pub mod record;
pub mod reply;
pub mod schema;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod stage;
pub mod stats;
pub mod status;
pub mod tune;

/// The sample batch that `batchflow demo` runs.
pub const DEMO_BATCH: &str = include_str!("../examples/quickstart.jsonl");
