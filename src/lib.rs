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
//! Module map (arrows point down: no layer imports one above it, and no two modules import each
//! other; `tests/layout.rs` checks both):
//! - [`engine`]: one run wired together (`engine::start`: files checked, input opened,
//!   preflight, outputs prepared; `engine::resolve`: options into a [`engine::RunConfig`]),
//!   and how it ended. [`error`]: the one error type where the engine meets the binary, over
//!   each layer's own, and the exit codes.
//! - [`options`]: [`options::RunOptions`], every knob of a run with its default.
//!   [`config`]: pipeline TOML files (structure, `${ENV}` interpolation, `--set`, resolution
//!   into a [`config::Pipeline`] that lays itself over options). [`validate`]: the checks of a
//!   pipeline file that need I/O, and its dry run. [`tune`] and [`status`]: those commands.
//!   [`verify`]: proof that results files (shards, parts) hold one row for every input line.
//!   [`results_set`]: the results files both read, here or on object storage, damaged ones
//!   told apart.
//! - [`source`]: input to requests, on their own thread: JSONL lines (`source::lines`) or
//!   Parquet rows (`source::parquet`), both checked by `source::request`; records shaped into
//!   requests by `source::template`.
//! - [`stage`]: the concurrent stage, its adaptive limit (`stage::limit`) and retry policy
//!   (`stage::retry`).
//! - [`backend`]: the `Backend` seam, the HTTP backend, failure classification, preflight, the
//!   pool of several backends.
//! - [`sink`]: output writers on their own thread: `sink::jsonl`, the error file
//!   (`sink::errors`), and `sink::parquet` with its crash-safe file format in
//!   `sink::checkpoint`, its part files in `sink::dataset` (`--output DIR/`), its columns in
//!   `sink::results` and its fingerprint in `sink::fingerprint`. One writer each: a results
//!   file's or shard's lock (`sink::lock`), a store's lease and fenced uploads (`sink::remote`),
//!   a shard's generations (`sink::generation`), all following `sink::mode::OutputMode`.
//! - [`paths`]: every file a run writes, checked against its inputs and each other.
//!   [`storage`]: object-storage URLs (S3, GCS, Azure) through `object_store`: list, get,
//!   download, conditional writes, delete. [`tls`]: the process's rustls provider, for every HTTPS client.
//! - [`filter`]: the `where` expressions of pipeline stages (`fit != 'weak' and score >= 7`):
//!   parsed, and asked of a record with SQL's three-valued logic. Pure: no I/O. [`handoff`]:
//!   the records a later stage gets from an earlier stage's rows, built alike by the run and
//!   by `verify`.
//! - [`item`]: what flows between source, stage and sink: requests, invalid lines, outcomes.
//!   [`idset`]: the compact set of custom_id hashes behind duplicate detection and resume.
//!   [`reply`]: what is read from a server's answer. [`schema`]: structured output's JSON
//!   Schema subset.
//! - [`shutdown`]: signals to stop and abort, passed into the engine.
//! - [`stats`], [`progress`], [`gpu`], [`metrics`]: run figures, their display on stderr and
//!   in the `--stats` file, GPU memory (NVML, Ollama's `/api/ps`), and the Prometheus endpoint
//!   (`--metrics`, its text format in `metrics::text`). [`live_status`]: the hidden file beside
//!   the results that `status` reads to tell a running run from a stopped or finished one.
//! - [`serve`]: `batchflow serve`, the OpenAI Files and Batches API over the engine, its
//!   state in plain files (`serve::store`).
//! - [`mock`]: an Ollama-compatible mock server for tests, benchmarks and dry runs.
//!
//! The command line is the binary's alone (`src/main.rs` and `src/flags/`): no module here
//! names clap.

pub mod backend;
pub mod config;
pub mod engine;
pub mod error;
pub mod filter;
pub mod gpu;
pub mod handoff;
pub mod idset;
pub mod item;
pub mod live_status;
pub mod metrics;
pub mod mock;
pub mod options;
pub mod paths;
pub mod plan;
pub mod progress;
pub mod reply;
pub mod results_set;
pub mod schema;
pub mod serve;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod stage;
pub mod stats;
pub mod status;
pub mod storage;
pub mod tls;
pub mod tune;
pub mod validate;
pub mod verify;

/// The sample batch that `batchflow demo` runs.
pub const DEMO_BATCH: &str = include_str!("../examples/quickstart.jsonl");
