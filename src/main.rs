//! The `batchflow` binary: parse flags, set up logging and the runtime, dispatch to the engine
//! or the mock server, and map the outcome to an exit code. Everything else is in the library.

#![allow(
    clippy::print_stdout,
    reason = "the binary writes its data (results, reports) to standard output"
)]

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
mod flags;

use batchflow::config::{JsonlTarget, Pipeline};
use batchflow::engine::{self, JsonlStream, RunConfig, RunReport};
use batchflow::error::{Error, ExitStatus};
use batchflow::mock::{MockConfig, MockServer};
use batchflow::options::{Console, RunOptions, Workers};
use batchflow::progress;
use batchflow::shutdown::Shutdown;
use batchflow::sink::results::ExtraColumns;
use batchflow::source::Input;
use batchflow::verify::{Problem, Summary};
use flags::{
    Cli, Command, DemoArgs, Given, LogArgs, MockArgs, PipelineRunArgs, PlanArgs, RunArgs,
    ServeArgs, StatusArgs, TuneArgs, ValidateArgs, VerifyArgs, folder_of_saved,
};

/// A results file's row group is built in buffers of megabytes that are freed at each
/// checkpoint. glibc soon serves blocks that size from its heap (its mmap threshold rises with
/// each freed block), where the freed space stays resident: a million-row run then held
/// 56 MiB instead of 42 MiB. A fixed threshold keeps such blocks mapped on their own and
/// unmapped when freed.
fn return_large_blocks_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of glibc's allocator, and no other thread exists
    // yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
}

fn main() -> ExitCode {
    return_large_blocks_to_the_system();
    let cli = Cli::parse_noting_given();
    init_logging(cli.log);
    // One thread runs the stage and every connection, so a request's future and its socket
    // never wake each other across threads: on the multi-threaded runtime those hand-offs cost
    // about a third of the client's CPU (BENCHMARKS.md). Input and output have threads of their
    // own, and one thread serves tens of thousands of requests a second.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("batchflow: cannot start the async runtime: {error}");
            return ExitCode::from(ExitStatus::Error.code());
        }
    };
    let shutdown = Shutdown::new();
    // A batch listens for SIGINT/SIGTERM from its first instant, so that a signal during
    // start-up (a blocked open, a silent backend) ends it as interrupted. The other commands
    // keep the default handling.
    if matches!(
        cli.command,
        None | Some(Command::Run(_)) | Some(Command::Demo(_)) | Some(Command::Serve(_))
    ) {
        let _runtime = runtime.enter();
        shutdown.listen_for_signals();
    }
    // Spawned, so that a bug's panic ends as an error message and exit status 2.
    let outcome = runtime.block_on(async {
        tokio::spawn(dispatch(cli, shutdown))
            .await
            .unwrap_or_else(|error| Err(anyhow::anyhow!("the run failed: {error}")))
    });
    let status = match outcome {
        Ok(status) => status,
        Err(error) => {
            eprintln!("batchflow: {error:#}");
            ExitStatus::Error
        }
    };
    // Threads still blocked on input (an interactive stdin) must not hold the exit.
    runtime.shutdown_background();
    ExitCode::from(status.code())
}

fn init_logging(log: LogArgs) {
    let level = if log.quiet {
        tracing::Level::WARN
    } else if log.verbose {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    tracing_subscriber::fmt()
        .with_writer(progress::stderr_writer)
        .with_ansi(io::stderr().is_terminal())
        .with_target(false)
        .with_max_level(level)
        .init();
}

async fn dispatch(cli: Cli, shutdown: Shutdown) -> anyhow::Result<ExitStatus> {
    match cli.command {
        None => run_batch(cli.run, cli.log, shutdown).await,
        Some(Command::MockServer(args)) => serve_mock(args).await,
        Some(Command::Demo(args)) => demo(args, cli.log, shutdown).await,
        Some(Command::Status(args)) => status(args).await,
        Some(Command::Run(args)) => run_pipeline(args, cli.log, shutdown).await,
        Some(Command::Validate(args)) => validate(args).await,
        Some(Command::Tune(args)) => tune(args, cli.log).await,
        Some(Command::Plan(args)) => plan(args, cli.log).await,
        Some(Command::Verify(args)) => verify(args, cli.log).await,
        Some(Command::Serve(args)) => serve(args, shutdown).await,
    }
}

/// Serves the Batch API until a signal stops it (then the running batch drains and stays
/// resumable).
async fn serve(args: ServeArgs, shutdown: Shutdown) -> anyhow::Result<ExitStatus> {
    let served = match &args.file {
        Some(file) => match batchflow::validate::load_served(file, &args.set, env)? {
            Ok(served) => Some(served),
            Err(problems) => return Ok(report_problems(file, &args.set, &problems)),
        },
        None => None,
    };
    let mut run = args.run_options(served.as_ref());
    // Kept alive for as long as the server runs.
    let _mock = if args.mock || served.as_ref().is_some_and(|served| served.backend.mock) {
        let mock = start_mock(Some(run.workers)).await?;
        run.backends = vec![mock.url()];
        Some(mock)
    } else {
        None
    };
    let mut options = args.options(served.as_ref(), run, env)?;
    options.mock = _mock.as_ref().map(MockServer::url);
    shutdown.set_grace(options.run.grace);
    batchflow::serve::serve(options, shutdown).await?;
    Ok(ExitStatus::Success)
}

/// Starts the built-in mock with as many slots as the run has workers per backend (with
/// `--workers auto`, as many as the default). It answers any model, so that a batch written
/// for another server runs against it unchanged.
async fn start_mock(workers: Option<Workers>) -> anyhow::Result<MockServer> {
    let default = RunOptions::default().workers;
    let config = MockConfig {
        slots: workers.unwrap_or(default).count_or(default.count_or(1)) as usize,
        latency_spread: 0.5,
        any_model: true,
        ..MockConfig::default()
    };
    let mock = MockServer::start(config).await?;
    tracing::info!("Built-in mock server listening on {}.", mock.url());
    Ok(mock)
}

fn console(log: LogArgs) -> Console {
    Console {
        quiet: log.quiet,
        stderr_is_terminal: io::stderr().is_terminal(),
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

async fn run_batch(args: RunArgs, log: LogArgs, shutdown: Shutdown) -> anyhow::Result<ExitStatus> {
    if args.records.prompt.is_some() {
        return run_records(args, log, shutdown).await;
    }
    if let Some(path) = args
        .input
        .as_deref()
        .filter(|path| starts_with_a_record(path))
    {
        eprintln!(
            "batchflow: {}: line 1 is {}",
            path.display(),
            batchflow::source::request::RECORD_HINT
        );
        return Ok(ExitStatus::Error);
    }
    if args.knobs.dry_run {
        let mock = match args.knobs.backend.mock {
            true => Some(start_mock(None).await?),
            false => None,
        };
        let url = mock.as_ref().map(MockServer::url);
        let config = args.options().resolve(console(log), url, env)?;
        return dry_run(config, &ExtraColumns::default(), &shutdown).await;
    }
    let output = &args.knobs.output;
    let stdout = output.output.is_none() || output.jsonl;
    run_options(
        args.options(),
        args.knobs.backend.mock,
        stdout,
        log,
        shutdown,
    )
    .await
}

/// Whether the regular file at `path` starts with a record (a JSON object with none of a
/// request line's fields): read as request lines, every line would be refused alike, so the
/// run is refused once instead. A pipe, Parquet or a store's object is not looked into.
fn starts_with_a_record(path: &Path) -> bool {
    use std::io::BufRead;
    let is_jsonl_file = path.is_file()
        && !path
            .extension()
            .is_some_and(|extension| extension.eq_ignore_ascii_case("parquet"));
    let Some(file) = is_jsonl_file.then(|| File::open(path).ok()).flatten() else {
        return false;
    };
    // A first line longer than this is no record worth guessing about.
    let mut lines = io::BufReader::new(io::Read::take(file, 1 << 20)).lines();
    let first = lines.find_map(|line| line.ok().filter(|line| !line.trim().is_empty()));
    first
        .and_then(|line| {
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&line).ok()
        })
        .is_some_and(|fields| batchflow::source::request::is_record(&fields))
}

/// Records with `--prompt`: the pipeline the flags describe (saved first with
/// `--save-pipeline`), run as `run FILE` runs one.
async fn run_records(
    args: RunArgs,
    log: LogArgs,
    shutdown: Shutdown,
) -> anyhow::Result<ExitStatus> {
    let save = args.records.save_pipeline.clone();
    let folder = folder_of_saved(save.as_deref());
    let file = match args.records.pipeline(
        args.input.as_deref(),
        &args.knobs.backend,
        Some(&args.knobs),
        &args.given,
        &folder,
    ) {
        Ok(file) => file,
        Err(problem) => {
            eprintln!("batchflow: {problem}");
            return Ok(ExitStatus::Error);
        }
    };
    if let Some(path) = &save {
        let text = toml::to_string_pretty(&file).context("cannot write the pipeline as TOML")?;
        let header = format!(
            "# Written by `batchflow --save-pipeline`; run it again with\n#   batchflow run {}\n",
            path.display()
        );
        std::fs::write(path, format!("{header}{text}"))
            .with_context(|| format!("cannot write {}", path.display()))?;
        tracing::info!("Saved the pipeline to {}.", path.display());
    }
    let source = PipelineSource::Built {
        file: Box::new(file),
        folder,
        saved: save,
    };
    run_pipeline_from(source, &[], &args.knobs, &args.given, log, shutdown).await
}

/// Prints the first requests a run would send (and the records' columns), sending nothing.
async fn dry_run(
    config: RunConfig,
    extras: &ExtraColumns,
    shutdown: &Shutdown,
) -> anyhow::Result<ExitStatus> {
    let rendered = tokio::select! {
        _ = shutdown.stopping() => return Ok(ExitStatus::Interrupted),
        rendered = batchflow::validate::dry_run(config, extras) => rendered?,
    };
    print!("{rendered}");
    Ok(ExitStatus::Success)
}

/// Resolves `options` (against the built-in mock when `mock`) and runs them, with JSONL on
/// standard output when `stdout`.
async fn run_options(
    options: RunOptions,
    mock: bool,
    stdout: bool,
    log: LogArgs,
    shutdown: Shutdown,
) -> anyhow::Result<ExitStatus> {
    let mock = match mock {
        true => Some(start_mock(Some(options.workers)).await?),
        false => None,
    };
    let config = options.resolve(console(log), mock.as_ref().map(MockServer::url), env)?;
    let jsonl = if stdout { Some(stdout_stream()?) } else { None };
    execute(config, jsonl, log, shutdown).await
}

/// Runs a resolved configuration (signals stop it through `shutdown`), then reports how it
/// went.
async fn execute(
    config: RunConfig,
    jsonl: Option<JsonlStream>,
    log: LogArgs,
    shutdown: Shutdown,
) -> anyhow::Result<ExitStatus> {
    shutdown.set_grace(config.grace);
    let report = match sent(engine::run(config, jsonl, shutdown.clone()).await)? {
        Ok(report) => report,
        Err(status) => return Ok(status),
    };
    if !log.quiet {
        eprint!("{}", progress::summary(&report.stats, &report.backend_url));
    }
    log_resume_notes(&report);
    if let Some(fatal) = &report.fatal {
        eprintln!("batchflow: {fatal}");
    }
    let status = report.exit_status();
    if let Some(metrics) = report.metrics {
        shutdown.run_ended();
        metrics.close(shutdown.stopping()).await;
    }
    Ok(status)
}

/// A run's start as the binary reports it: a stop before the first request is said once
/// (nothing was sent) and becomes the interrupted status; any other error goes up.
fn sent<T>(started: Result<T, Error>) -> anyhow::Result<Result<T, ExitStatus>> {
    match started {
        Ok(value) => Ok(Ok(value)),
        Err(Error::Interrupted) => {
            eprintln!(
                "batchflow: interrupted before the first request was sent; nothing was sent."
            );
            Ok(Err(ExitStatus::Interrupted))
        }
        Err(error) => Err(error.into()),
    }
}

/// Prints each problem of a pipeline file on its own line, naming the `--set` that caused it
/// rather than the file where one did; the exit status for it.
fn report_problems(file: &Path, sets: &[String], problems: &[String]) -> ExitStatus {
    for problem in problems {
        match batchflow::config::blamed_set(problem, sets) {
            Some(set) => eprintln!("batchflow: --set {set}: {problem}"),
            None => eprintln!("batchflow: {}: {problem}", file.display()),
        }
    }
    ExitStatus::Error
}

/// Where a run's pipeline comes from.
enum PipelineSource {
    /// A pipeline file, with `--set` overrides.
    File(std::path::PathBuf),
    /// Made from a run's flags (records with `--prompt`), relative paths read from `folder`;
    /// `saved` where `--save-pipeline` wrote it.
    Built {
        file: Box<batchflow::config::PipelineFile>,
        folder: std::path::PathBuf,
        saved: Option<std::path::PathBuf>,
    },
}

impl PipelineSource {
    /// How messages name it.
    fn label(&self) -> &Path {
        match self {
            PipelineSource::File(path) => path,
            PipelineSource::Built { .. } => Path::new("--prompt"),
        }
    }
}

/// A pipeline file resolved into a run, with the built-in mock it asked for (kept alive by
/// the caller for the run's length).
struct PipelineRun {
    /// The options `config` was resolved from.
    options: RunOptions,
    config: RunConfig,
    pipeline: Pipeline,
    extras: ExtraColumns,
    _mock: Option<MockServer>,
}

/// Loads and checks the pipeline (a file with `sets`), lays `flags` over its options and
/// resolves them; problems with the pipeline are printed and come back as the exit status.
/// When the pipeline or `mock` asks for the built-in mock, `mock_workers` sizes it.
async fn pipeline_run(
    source: &PipelineSource,
    sets: &[String],
    mock: bool,
    mock_workers: impl FnOnce(&Pipeline) -> Option<Workers>,
    flags: impl FnOnce(&mut RunOptions),
    log: LogArgs,
) -> anyhow::Result<Result<PipelineRun, ExitStatus>> {
    let checked = match source {
        PipelineSource::File(file) => batchflow::validate::load_checked(file, sets, env)?,
        PipelineSource::Built { file, folder, .. } => {
            batchflow::validate::check_built(file, folder)
        }
    };
    let (pipeline, extras) = match checked {
        Ok(checked) => checked,
        Err(problems) => return Ok(Err(report_problems(source.label(), sets, &problems))),
    };
    let mock = match mock || pipeline.backend.mock {
        true => Some(start_mock(mock_workers(&pipeline)).await?),
        false => None,
    };
    let mut options = RunOptions::default();
    pipeline.apply(&mut options);
    options.extras = extras.clone();
    match source {
        PipelineSource::File(file) => options.pipeline_file = Some(file.clone()),
        PipelineSource::Built { saved, .. } => {
            options.pipeline_file = saved.clone();
            options.knobs = batchflow::paths::Knobs::flags();
        }
    }
    flags(&mut options);
    let config = options.resolve(console(log), mock.as_ref().map(MockServer::url), env)?;
    Ok(Ok(PipelineRun {
        options,
        config,
        pipeline,
        extras,
        _mock: mock,
    }))
}

/// `--model NAME` over a pipeline file: its `request.model`, set before the file is checked
/// (for records the model is part of each request's shape).
fn model_set(model: Option<&str>) -> Option<String> {
    model.map(|model| format!("request.model={}", toml::Value::String(model.to_owned())))
}

async fn run_pipeline(
    args: PipelineRunArgs,
    log: LogArgs,
    shutdown: Shutdown,
) -> anyhow::Result<ExitStatus> {
    // `--model` is each stage's model in a pipeline of stages (`run_stages`), and
    // `request.model` in any other.
    let loaded = batchflow::config::load(&args.file, &args.set, env)?;
    if !loaded.stages.is_empty() {
        return run_stages(&args.file, loaded, &args, log, shutdown).await;
    }
    let mut sets = args.set.clone();
    if args.given.has("model") {
        sets.extend(model_set(args.knobs.backend.model.as_deref()));
    }
    let source = PipelineSource::File(args.file.clone());
    run_pipeline_from(source, &sets, &args.knobs, &args.given, log, shutdown).await
}

/// Runs a pipeline of stages (`[[stage]]` tables) as one, or shows each stage's first
/// requests with `--dry-run`. The run's flags are laid over every stage; a results path
/// given names the folder of every stage's results, as the file's `sink.parquet` does.
async fn run_stages(
    file: &Path,
    mut loaded: batchflow::config::PipelineFile,
    args: &PipelineRunArgs,
    log: LogArgs,
    shutdown: Shutdown,
) -> anyhow::Result<ExitStatus> {
    use batchflow::config::stages::{stage_results, stage_side_file};
    use batchflow::engine::stages::StageRun;
    let (knobs, given) = (&args.knobs, &args.given);
    if given.has("model") {
        for stage in &mut loaded.stages {
            stage.model.clone_from(&knobs.backend.model);
        }
    }
    let folder = batchflow::validate::folder_of(file);
    let checked = match batchflow::validate::stages::check_stages(&loaded, folder) {
        Some(Ok(checked)) => checked,
        Some(Err(problems)) => return Ok(report_problems(file, &args.set, &problems)),
        None => return Err(anyhow::anyhow!("{} has no [[stage]]", file.display())),
    };
    let mock = match knobs.backend.mock || loaded.backend.mock {
        true => {
            let workers = match given.has("workers") {
                true => Some(knobs.workers),
                false => checked.first().and_then(|stage| stage.pipeline.workers),
            };
            Some(start_mock(workers).await?)
        }
        false => None,
    };
    let mut runs = Vec::with_capacity(checked.len());
    let mut shown = String::new();
    for stage in &checked {
        let name = stage.plan.name.as_str();
        let mut options = RunOptions::default();
        stage.pipeline.apply(&mut options);
        options.extras = stage.extras.clone();
        options.pipeline_file = Some(file.to_owned());
        let from = stage.plan.from.as_ref().map(|(from, filter)| {
            batchflow::config::stages::upstream(&checked[*from].plan.name, filter.as_ref())
        });
        options.upstream.clone_from(&from);
        knobs.lay_over(&mut options, given);
        if let Some(output) = knobs.output.output.as_ref().filter(|_| given.has("output")) {
            let folder = output.to_string_lossy();
            options.results = Some(stage_results(&folder, name).into());
        }
        if let Some(stats) = knobs.watch.stats.as_ref().filter(|_| given.has("stats")) {
            options.stats_file = Some(stage_side_file(stats, name));
        }
        if let Some(errors) = knobs.output.errors.as_ref().filter(|_| given.has("errors")) {
            options.errors_file = Some(stage_side_file(errors, name));
        }
        // The folder of every stage's results is the pipeline's to make, as a dataset's is.
        if let Some(parent) = options
            .results
            .as_deref()
            .filter(|path| !knobs.dry_run && !batchflow::storage::is_url(&path.to_string_lossy()))
            .and_then(Path::parent)
        {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot make the results folder {}", parent.display()))?;
        }
        let mut config = options.resolve(console(log), mock.as_ref().map(MockServer::url), env)?;
        if knobs.dry_run {
            let _ = writeln!(
                shown,
                "Stage {name}{}:",
                from.as_deref()
                    .map_or(String::new(), |from| format!(" (reads {from})"))
            );
            if let Some((from, _)) = &stage.plan.from {
                let record =
                    batchflow::validate::stages::placeholder_record(stage, &checked[*from]);
                shown.push_str("  (no rows exist before the run: each column shows its name)\n");
                config.input =
                    Input::Text(format!("{}\n", serde_json::Value::Object(record)).into());
            }
            let rendered = tokio::select! {
                _ = shutdown.stopping() => return Ok(ExitStatus::Interrupted),
                rendered = batchflow::validate::dry_run(config, &stage.extras) => rendered?,
            };
            shown.push_str(&rendered);
            continue;
        }
        runs.push(StageRun {
            name: name.to_owned(),
            config,
            from: stage.plan.from.clone(),
            handoff: stage.handoff(),
        });
    }
    if knobs.dry_run {
        print!("{shown}");
        return Ok(ExitStatus::Success);
    }
    if let Some(first) = runs.first() {
        shutdown.set_grace(first.config.grace);
    }
    let ends = match sent(engine::stages::run_stages(runs, shutdown.clone()).await)? {
        Ok(ends) => ends,
        Err(status) => return Ok(status),
    };
    let mut status = ExitStatus::Success;
    let mut endpoints = Vec::new();
    for end in ends {
        if !log.quiet {
            eprint!(
                "Stage {}: {}",
                end.name,
                progress::summary(&end.report.stats, &end.report.backend_url)
            );
        }
        // The notes of each stage say which stage they are of.
        let stage = tracing::info_span!("stage", name = %end.name).entered();
        log_resume_notes(&end.report);
        drop(stage);
        if let Some(fatal) = &end.report.fatal {
            eprintln!("batchflow: stage {}: {fatal}", end.name);
        }
        status = status.worst(end.report.exit_status());
        endpoints.extend(end.report.metrics);
    }
    if !endpoints.is_empty() {
        shutdown.run_ended();
        for metrics in endpoints {
            metrics.close(shutdown.stopping()).await;
        }
    }
    Ok(status)
}

/// Runs a pipeline with the run's flags laid over it (those `given` win), or shows its first
/// requests with `--dry-run`.
async fn run_pipeline_from(
    source: PipelineSource,
    sets: &[String],
    knobs: &flags::RunKnobs,
    given: &Given,
    log: LogArgs,
    shutdown: Shutdown,
) -> anyhow::Result<ExitStatus> {
    let flags = |options: &mut RunOptions| knobs.lay_over(options, given);
    // A dry run sends nothing, but starts the mock all the same: it resolves as the run
    // against the mock would, which needs no API key.
    let mock_workers = |pipeline: &Pipeline| match given.has("workers") {
        true => Some(knobs.workers),
        false => pipeline.workers,
    };
    let run = pipeline_run(&source, sets, knobs.backend.mock, mock_workers, flags, log).await?;
    let PipelineRun {
        config,
        pipeline,
        extras,
        _mock,
        ..
    } = match run {
        Ok(run) => run,
        Err(status) => return Ok(status),
    };
    if knobs.dry_run {
        return dry_run(config, &extras, &shutdown).await;
    }
    // A JSONL file is the engine's to check and open, like every other output.
    let jsonl = match &pipeline.jsonl {
        Some(JsonlTarget::Stdout) => Some(stdout_stream()?),
        Some(JsonlTarget::File(_)) | None => None,
    };
    execute(config, jsonl, log, shutdown).await
}

/// The options a probe runs (`tune`, `plan`): the input as requests, records with
/// `--prompt`, or a pipeline file, with the backend flags laid over; and the built-in mock
/// when asked for, kept alive by the caller.
async fn probe_options(
    args: &TuneArgs,
    log: LogArgs,
) -> anyhow::Result<Result<(RunOptions, Option<MockServer>), ExitStatus>> {
    let pipeline_file = pipeline_file_of(args).map(Path::to_path_buf);
    let source = match (pipeline_file, &args.records.prompt) {
        (Some(file), _) => Some(PipelineSource::File(file)),
        (None, Some(_)) => {
            let built = args.records.pipeline(
                args.input.as_deref(),
                &args.backend,
                None,
                &args.given,
                Path::new("."),
            );
            match built {
                Ok(file) => Some(PipelineSource::Built {
                    file: Box::new(file),
                    folder: ".".into(),
                    saved: None,
                }),
                Err(problem) => {
                    eprintln!("batchflow: {problem}");
                    return Ok(Err(ExitStatus::Error));
                }
            }
        }
        (None, None) => None,
    };
    let flags = |options: &mut RunOptions| {
        args.backend.lay_over(options, &args.given);
        if args.given.has("max_line_bytes") {
            options.max_line_bytes = args.max_line_bytes;
        }
    };
    match source {
        // The pipeline's own settings, as `run FILE [--mock]` would take them.
        Some(source) => {
            let mut sets = Vec::new();
            if let (PipelineSource::File(file), true) = (&source, args.given.has("model")) {
                let model = model_set(args.backend.model.as_deref());
                // A pipeline of stages is probed through its first stage, which has the model.
                let staged = batchflow::config::load(file, &[], env)
                    .is_ok_and(|loaded| !loaded.stages.is_empty());
                sets.extend(match staged {
                    true => model.map(|set| set.replacen("request.", "stage.0.", 1)),
                    false => model,
                });
            }
            let mock = args.backend.mock;
            match pipeline_run(&source, &sets, mock, |_| None, flags, log).await? {
                Ok(run) => Ok(Ok((run.options, run._mock))),
                Err(status) => Ok(Err(status)),
            }
        }
        None => {
            let mock = match args.backend.mock {
                true => Some(start_mock(None).await?),
                false => None,
            };
            let mut options = RunOptions {
                input: Input::from_arg(args.input.clone()),
                ..RunOptions::default()
            };
            args.backend.lay_over(&mut options, &Given::all());
            options.max_line_bytes = args.max_line_bytes;
            Ok(Ok((options, mock)))
        }
    }
}

async fn tune(args: TuneArgs, log: LogArgs) -> anyhow::Result<ExitStatus> {
    let (mut options, mock) = match probe_options(&args, log).await? {
        Ok(found) => found,
        Err(status) => return Ok(status),
    };
    let probe = batchflow::tune::Probe {
        sample: args.sample.max(1),
        max_workers: args.max_workers,
        keep: None,
    };
    // A pipe is read once: the probe's requests are kept in memory and read again.
    options.input = batchflow::tune::sample(&options.input, probe.most_requests())?;
    let url = mock.as_ref().map(MockServer::url);
    let report = batchflow::tune::tune(&options, &probe, console(log), url, env).await?;
    print!("{}", report.render());
    Ok(ExitStatus::Success)
}

async fn plan(args: PlanArgs, log: LogArgs) -> anyhow::Result<ExitStatus> {
    let (mut options, mock) = match probe_options(&args.probe, log).await? {
        Ok(found) => found,
        Err(status) => return Ok(status),
    };
    if matches!(options.input, Input::Stdin) {
        eprintln!(
            "batchflow: plan reads its input twice (the probe, then a count of every line): give it a file, not standard input"
        );
        return Ok(ExitStatus::Error);
    }
    if let Some(output) = &args.output {
        options.results = Some(output.clone());
        options.knobs.output = "--output".into();
    }
    let probe = batchflow::tune::Probe {
        sample: args.probe.sample.max(1),
        max_workers: args.probe.max_workers,
        keep: args.output.clone(),
    };
    let later = later_stages(&args.probe)?;
    let url = mock.as_ref().map(MockServer::url);
    let report =
        batchflow::plan::plan(&options, &probe, later.as_ref(), console(log), url, env).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(ExitStatus::Success)
}

/// For `plan` of a pipeline of stages: the stages that read its first stage (which the probe
/// runs), with what they need to be projected from the probe's rows.
fn later_stages(args: &TuneArgs) -> anyhow::Result<Option<batchflow::plan::LaterStages>> {
    let Some(file) = pipeline_file_of(args) else {
        return Ok(None);
    };
    let loaded = batchflow::config::load(file, &[], env)?;
    let folder = batchflow::validate::folder_of(file);
    let Some(Ok(checked)) = batchflow::validate::stages::check_stages(&loaded, folder) else {
        return Ok(None);
    };
    let Some(first) = checked.first() else {
        return Ok(None);
    };
    let stages = checked
        .iter()
        .filter_map(|stage| match &stage.plan.from {
            Some((0, filter)) => Some(batchflow::plan::LaterStage {
                name: stage.plan.name.clone(),
                reads: batchflow::config::stages::upstream(&first.plan.name, filter.as_ref()),
                filter: filter.clone(),
            }),
            _ => None,
        })
        .collect();
    Ok(Some(batchflow::plan::LaterStages {
        first: first.handoff(),
        stages,
    }))
}

/// The pipeline file a probe (`tune`, `plan`) reads, when its input is one.
fn pipeline_file_of(args: &TuneArgs) -> Option<&Path> {
    args.input.as_deref().filter(|path| {
        path.extension()
            .is_some_and(|extension| extension.eq_ignore_ascii_case("toml"))
    })
}

async fn validate(args: ValidateArgs) -> anyhow::Result<ExitStatus> {
    let mut sets = args.set.clone();
    let backend = &args.backend;
    if args.given.has("model") {
        sets.extend(model_set(backend.model.as_deref()));
    }
    // The built-in mock answers every model: there is no backend to check.
    let offline = args.offline || backend.mock;
    let flags = |options: &mut RunOptions| backend.lay_over(options, &args.given);
    match batchflow::validate::validate(&args.file, &sets, offline, flags, env).await? {
        Ok(summary) => {
            print!("{summary}");
            Ok(ExitStatus::Success)
        }
        Err(problems) => Ok(report_problems(&args.file, &args.set, &problems)),
    }
}

fn log_resume_notes(report: &RunReport) {
    if report.kept_rows > 0 || report.skipped_lines > 0 {
        tracing::info!(
            "Resumed: {} rows kept from earlier runs ({} failed, {} invalid), {} input lines skipped as done.",
            report.kept_rows,
            report.kept_failed,
            report.kept_invalid,
            report.skipped_lines
        );
    }
    if let Some(pruned) = report.pruned.filter(|pruned| *pruned > 0) {
        tracing::info!("Pruned {pruned} rows no longer in the input.");
    } else if let Some(unknown) = report.unknown_kept.filter(|unknown| *unknown > 0) {
        tracing::warn!(
            "Rows for custom_ids (or lines) not in this input: {unknown}; was the results file resumed with a different input? --resume --prune drops them."
        );
    }
    match (&report.output, report.interrupted, report.fatal.is_some()) {
        (Some(path), _, true) => tracing::warn!(
            "Stopped early; {} keeps every row up to its last checkpoint. To continue, run the same command with --resume.",
            path.display()
        ),
        (Some(path), true, false) => tracing::warn!(
            "Stopped early; {} is closed and readable. To continue, run the same command with --resume.",
            path.display()
        ),
        (None, true, _) => tracing::warn!(
            "Stopped early: {} results were written; requests without a result line were not finished.",
            report.stats.done
        ),
        _ => {}
    }
}

async fn status(args: StatusArgs) -> anyhow::Result<ExitStatus> {
    let stages = match is_pipeline_file(&args.path) {
        true => match pipeline_results(&args.path)? {
            Ok(found) => Some(found),
            Err(status) => return Ok(status),
        },
        false => None,
    };
    // File reads, and object storage's blocking client, which needs a thread of its own.
    let path = args.path.clone();
    let status = tokio::task::spawn_blocking(move || match stages {
        None => batchflow::status::find(&path),
        Some(PipelineResults::File(results)) => batchflow::status::find(&results),
        Some(PipelineResults::Stages(stages)) => batchflow::status::find_stages(stages),
    })
    .await??;
    print!("{}", status.render(&args.path));
    Ok(match status.is_damaged() {
        true => ExitStatus::Error,
        false => ExitStatus::Success,
    })
}

fn is_pipeline_file(path: &Path) -> bool {
    path.extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("toml"))
}

/// The results a pipeline file writes, as `status` reports them.
enum PipelineResults {
    /// A pipeline of one request: its `sink.parquet`.
    File(std::path::PathBuf),
    /// A pipeline of stages: each stage's results, in the file's order.
    Stages(Vec<batchflow::status::StageResults>),
}

/// Where the pipeline `file` writes its results, found without reading its input; problems
/// with the file are printed and come back as the exit status.
fn pipeline_results(file: &Path) -> anyhow::Result<Result<PipelineResults, ExitStatus>> {
    use batchflow::config::stages::{split, upstream};
    let loaded = batchflow::config::load(file, &[], env)?;
    let folder = batchflow::validate::folder_of(file);
    let no_results = || {
        eprintln!(
            "batchflow: {}: writes no Parquet results (sink.parquet): status reads results files",
            file.display()
        );
        ExitStatus::Error
    };
    let Some(plans) = split(&loaded) else {
        return Ok(match batchflow::config::resolve(&loaded, folder) {
            Ok(pipeline) => pipeline
                .parquet
                .map(PipelineResults::File)
                .ok_or_else(no_results),
            Err(problems) => Err(report_problems(file, &[], &problems)),
        });
    };
    let plans = match plans {
        Ok(plans) => plans,
        Err(problems) => return Ok(Err(report_problems(file, &[], &problems))),
    };
    let mut stages = Vec::with_capacity(plans.len());
    for plan in &plans {
        let path = match batchflow::config::resolve(&plan.file, folder) {
            Ok(pipeline) => pipeline.parquet,
            Err(problems) => return Ok(Err(report_problems(file, &[], &problems))),
        };
        let Some(path) = path else {
            return Ok(Err(no_results()));
        };
        stages.push(batchflow::status::StageResults {
            name: plan.name.clone(),
            path,
            reads: plan
                .from
                .as_ref()
                .map(|(from, filter)| upstream(&plans[*from].name, filter.as_ref())),
        });
    }
    Ok(Ok(PipelineResults::Stages(stages)))
}

/// `verify`: problems as JSON lines on standard output, the summary on standard error.
async fn verify(args: VerifyArgs, log: LogArgs) -> anyhow::Result<ExitStatus> {
    let mut options = RunOptions::default();
    let is_pipeline = is_pipeline_file(&args.input);
    if is_pipeline
        && !batchflow::config::load(&args.input, &[], env)?
            .stages
            .is_empty()
    {
        return verify_stages(args, log).await;
    }
    if is_pipeline {
        match batchflow::validate::load_checked(&args.input, &[], env)? {
            Ok((pipeline, _)) => pipeline.apply(&mut options),
            Err(problems) => return Ok(report_problems(&args.input, &[], &problems)),
        }
    } else {
        options.input = Input::from_arg(Some(args.input));
    }
    options.model = args.model.or(options.model);
    options.max_line_bytes = args.max_line_bytes;
    let results = args.results;
    let verified = write_problems(
        move |report| batchflow::verify::verify(&results, &options, report),
        Problem::to_json,
    )
    .await?;
    let summary = match verified {
        Ok(summary) => summary,
        Err(status) => return Ok(status),
    };
    if !summary.is_clean() || !log.quiet {
        eprintln!("batchflow verify: {}", summary.render());
    }
    Ok(verified_status(&summary))
}

/// `verify RESULTS --input PIPELINE.toml` of a pipeline of stages: RESULTS is the folder of
/// every stage's results (the file's `sink.parquet`, or the run's `--output`). The first stage
/// is checked against the input, each later one against the rows of the stage it reads that
/// were handed on to it; every problem and summary names its stage.
async fn verify_stages(args: VerifyArgs, log: LogArgs) -> anyhow::Result<ExitStatus> {
    use batchflow::config::stages::stage_results;
    use batchflow::verify::Upstream;
    let loaded = batchflow::config::load(&args.input, &[], env)?;
    let folder = batchflow::validate::folder_of(&args.input);
    let checked = match batchflow::validate::stages::check_stages(&loaded, folder) {
        Some(Ok(checked)) => checked,
        Some(Err(problems)) => return Ok(report_problems(&args.input, &[], &problems)),
        None => return Err(anyhow::anyhow!("{} has no [[stage]]", args.input.display())),
    };
    // Whether each stage's results are a file or a dataset is the pipeline's to say, whether
    // or not RESULTS ends in `/`.
    let datasets = loaded
        .sink
        .parquet
        .as_deref()
        .is_some_and(|sink| sink.ends_with('/'));
    let given = args.results.to_string_lossy();
    let folder = format!(
        "{}{}",
        given.trim_end_matches('/'),
        if datasets { "/" } else { "" }
    );
    let results_of = |name: &str| std::path::PathBuf::from(stage_results(&folder, name));
    let mut status = ExitStatus::Success;
    for stage in &checked {
        let name = stage.plan.name.clone();
        let results = results_of(&name);
        let (verified, from) = match &stage.plan.from {
            None => {
                let mut options = RunOptions::default();
                stage.pipeline.apply(&mut options);
                options.model = args.model.clone().or(options.model);
                options.max_line_bytes = args.max_line_bytes;
                let stage_name = name.clone();
                let verified = write_problems(
                    move |report| batchflow::verify::verify(&results, &options, report),
                    move |problem| problem.to_stage_json(&stage_name),
                )
                .await
                .with_context(|| format!("stage {name}"))?;
                (verified, None)
            }
            Some((from, filter)) => {
                let from = &checked[*from];
                let upstream = Upstream {
                    handoff: from.handoff(),
                    results: results_of(&from.plan.name),
                    filter: filter.clone(),
                };
                let stage_name = name.clone();
                let verified = write_problems(
                    move |report| batchflow::verify::verify_stage(&results, &upstream, report),
                    move |problem| problem.to_stage_json(&stage_name),
                )
                .await
                .with_context(|| format!("stage {name}"))?;
                (verified, Some(from.plan.name.as_str()))
            }
        };
        let summary = match verified {
            Ok(summary) => summary,
            Err(stopped) => return Ok(status.worst(stopped)),
        };
        if !summary.is_clean() || !log.quiet {
            let rendered = match from {
                None => summary.render(),
                Some(from) => summary.render_stage(from),
            };
            eprintln!("batchflow verify: stage {name}: {rendered}");
        }
        status = status.worst(verified_status(&summary));
    }
    Ok(status)
}

/// Runs a check on a blocking thread (file reads and a few seconds of CPU, off the runtime's
/// one thread), each problem written to standard output as `line` shows it. The summary, or
/// the exit status when the reader of standard output stopped early.
async fn write_problems(
    check: impl FnOnce(
        &mut dyn FnMut(Problem) -> io::Result<()>,
    ) -> Result<Summary, batchflow::verify::VerifyError>
    + Send
    + 'static,
    line: impl Fn(&Problem) -> String + Send + 'static,
) -> anyhow::Result<Result<Summary, ExitStatus>> {
    let verified = tokio::task::spawn_blocking(move || {
        let mut out = io::BufWriter::new(io::stdout().lock());
        let summary = check(&mut |problem| writeln!(out, "{}", line(&problem)));
        summary.and_then(|summary| {
            out.flush()
                .map(|()| summary)
                .map_err(batchflow::verify::VerifyError::Report)
        })
    })
    .await?;
    match verified {
        Ok(summary) => Ok(Ok(summary)),
        // A reader that stopped early (`| head`) was being shown problems.
        Err(batchflow::verify::VerifyError::Report(error))
            if error.kind() == io::ErrorKind::BrokenPipe =>
        {
            Ok(Err(ExitStatus::SomeFailed))
        }
        Err(error) => Err(error.into()),
    }
}

/// `verify`'s exit status for what it found. A file that cannot be read is not a gap to fill
/// by running again but a loss to look at.
fn verified_status(summary: &Summary) -> ExitStatus {
    match (summary.damaged, summary.is_clean()) {
        (1.., _) => ExitStatus::Error,
        (0, true) => ExitStatus::Success,
        (0, false) => ExitStatus::SomeFailed,
    }
}

async fn serve_mock(args: MockArgs) -> anyhow::Result<ExitStatus> {
    let mock = MockServer::start(args.config()).await?;
    println!("{}", mock.url());
    tracing::info!(
        "Mock Ollama server listening on {}; stop it with Ctrl-C.",
        mock.url()
    );
    tokio::select! {
        _ = mock.serve_forever() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(ExitStatus::Success)
}

async fn demo(args: DemoArgs, log: LogArgs, shutdown: Shutdown) -> anyhow::Result<ExitStatus> {
    let options = RunOptions {
        input: Input::Text(batchflow::DEMO_BATCH.into()),
        workers: Workers::Fixed(args.workers),
        ordered: args.ordered,
        ..RunOptions::default()
    };
    run_options(options, true, true, log, shutdown).await
}

/// Standard output for JSONL results, with its file's metadata when it is one (so the engine
/// can refuse `batchflow in.jsonl >> in.jsonl`).
fn stdout_stream() -> anyhow::Result<JsonlStream> {
    let file = stdout_file().context("cannot use standard output")?;
    let metadata = stdout_metadata();
    Ok(JsonlStream {
        writer: Box::new(file),
        file: metadata,
    })
}

#[cfg(unix)]
fn stdout_metadata() -> Option<std::fs::Metadata> {
    use std::os::fd::AsFd;
    let handle = io::stdout().as_fd().try_clone_to_owned().ok()?;
    File::from(handle).metadata().ok()
}

#[cfg(not(unix))]
fn stdout_metadata() -> Option<std::fs::Metadata> {
    None
}

/// Standard output as a plain file: `io::Stdout` flushes at every newline, which would cost a
/// system call per result line; the JSONL sink does its own buffering.
#[cfg(unix)]
fn stdout_file() -> io::Result<File> {
    use std::os::fd::AsFd;
    Ok(File::from(io::stdout().as_fd().try_clone_to_owned()?))
}

#[cfg(not(unix))]
fn stdout_file() -> io::Result<io::Stdout> {
    Ok(io::stdout())
}
