//! The `streamscore` command line: parse, set up logging, dispatch.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use streamscore::logging::{self, LogFormat};
use streamscore::{bench, config, demo, import, online, score, service, train};

#[derive(Parser, Debug)]
#[command(
    name = "streamscore",
    version,
    about = "Kafka-to-Kafka machine-learning scoring service"
)]
struct Cli {
    /// Log filter: a level (info, debug, ...) or a full tracing filter.
    #[arg(
        long,
        global = true,
        env = "STREAMSCORE_LOG_LEVEL",
        default_value = "info"
    )]
    log_level: String,
    /// `text` for people, `json` for log collectors.
    #[arg(long, global = true, env = "STREAMSCORE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start and matched once: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Consume features, score them, produce predictions (the service).
    Serve(config::ServeArgs),
    /// Train a model offline and write its model file.
    #[command(subcommand)]
    Train(TrainCommand),
    /// Convert a PMML, XGBoost, LightGBM or ONNX model into a streamscore model file.
    Import(import::ImportArgs),
    /// Score a JSON-lines file or stdin to stdout with a model file.
    Score(score::ScoreArgs),
    /// Run the service against an embedded broker with sample traffic.
    Demo(demo::DemoArgs),
    /// End-to-end throughput or latency figures of the service against a broker.
    Bench(bench::BenchArgs),
    /// Generate training data.
    #[command(subcommand)]
    Gen(GenCommand),
    /// The benchmark's loopback ceiling in a process of its own (run by `bench`).
    #[command(hide = true)]
    Loopback(bench::LoopbackArgs),
    /// Evaluate models offline.
    #[command(subcommand)]
    Eval(EvalCommand),
}

#[derive(Subcommand, Debug)]
enum EvalCommand {
    /// Test-then-learn replay of held-out ratings: frozen recommender vs online learning.
    Prequential(online::eval::PrequentialArgs),
}

#[derive(Subcommand, Debug)]
enum TrainCommand {
    /// Random-forest classifier on any numeric CSV (the iris measurements by default).
    #[command(alias = "iris")]
    Forest(train::iris::TrainIrisArgs),
    /// Matrix-factorization recommender on MovieLens-format ratings.
    Recommender(train::recommender::TrainRecommenderArgs),
}

#[derive(Subcommand, Debug)]
enum GenCommand {
    /// Synthetic MovieLens-format ratings with a planted low-rank structure.
    Ratings(train::ratings::GenRatingsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = logging::init(&cli.log_level, cli.log_format) {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            logging::report_fatal(&e);
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => runtime()?.block_on(service::serve(&args))?,
        Command::Demo(args) => runtime()?.block_on(demo::run(&args))?,
        Command::Bench(args) => runtime()?.block_on(bench::run(&args))?,
        Command::Loopback(args) => bench::run_loopback(&args)?,
        Command::Train(TrainCommand::Forest(args)) => train::iris::run(&args)?,
        Command::Import(args) => import::run(&args)?,
        Command::Train(TrainCommand::Recommender(args)) => train::recommender::run(&args)?,
        Command::Gen(GenCommand::Ratings(args)) => train::ratings::run(&args)?,
        Command::Eval(EvalCommand::Prequential(args)) => online::eval::run(&args)?,
        Command::Score(args) => {
            let summary = score::run(&args)?;
            eprintln!("{} scored, {} rejected", summary.scored, summary.rejected);
            if summary.rejected > 0 {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The pipeline blocks a worker briefly when partitions are revoked, so it needs a
/// multi-threaded runtime for the commit stage to keep running meanwhile.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}
