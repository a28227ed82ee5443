//! The integration tests: one crate, so that the support code and the dependencies are built
//! and linked once. Each module is an area; most run the real `batchflow` binary against the
//! in-process mock server (`support`).

mod support;

mod bad_input;
mod dashboard;
mod dataset;
mod deploy;
mod edges;
mod front_door;
mod fuzz_config;
mod fuzz_parser;
mod layout;
mod live_status;
mod messages;
mod metrics;
mod misbehaviour;
mod mock_models;
mod object_storage;
mod observe;
mod parquet_input;
mod pipeline;
mod pipelines;
mod plan;
mod prune;
mod readers;
mod readme;
mod remote_results;
mod residency;
mod resume;
mod scale;
mod secrets;
mod serve;
mod serve_disk;
mod serve_faults;
mod serve_limits;
mod serve_observe;
mod serve_owner;
mod serve_shape;
mod serve_store;
mod serve_webhooks;
mod stages;
mod stages_status;
mod verify;
mod writers;
