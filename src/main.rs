//! The `gsinfer` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use gsinfer::config::Config;

/// Inference appliance for satellite ground stations: telemetry in over
/// MQTT, anomaly scores and events out.
#[derive(Debug, Parser)]
#[command(name = "gsinfer", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service until SIGTERM or SIGINT.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short, default_value = "/etc/gsinfer/gsinfer.toml")]
        config: PathBuf,
        /// Do not rebuild stale TensorRT engines at start (such models run
        /// on tract until `gsinfer engine build`); overrides
        /// tensorrt.rebuild_at_start.
        #[arg(long)]
        no_rebuild: bool,
    },
    /// Build or inspect the TensorRT engines in the engine directory.
    #[command(subcommand)]
    Engine(EngineCommand),
    /// On a GPU box: compare TensorRT with tract on every TensorRT model
    /// (max abs/rel error, ms per batch per bucket); exit 1 on a mismatch.
    Selftest {
        /// Configuration file (TOML).
        #[arg(long, short, default_value = "/etc/gsinfer/gsinfer.toml")]
        config: PathBuf,
        /// Check only the CUDA layer (pinned staging, copies, CUDA graphs):
        /// needs a GPU, not TensorRT.
        #[arg(long)]
        cuda: bool,
        /// Largest acceptable relative difference (FP16 plans need ~1e-2).
        #[arg(long, default_value_t = 1e-3)]
        tolerance: f32,
    },
    /// Print the effective configuration, or every problem in it.
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(long, short, default_value = "/etc/gsinfer/gsinfer.toml")]
        config: PathBuf,
    },
    /// Publish a recorded channel (`<data-dir>/test/<channel>.npy`) over MQTT,
    /// or write it to a serial device (`--serial`).
    Replay {
        /// Configuration file (broker and topics).
        #[arg(long, short)]
        config: PathBuf,
        /// Data set root in the telemanom layout.
        #[arg(long, env = "GSINFER_DATA_DIR")]
        data_dir: PathBuf,
        /// Channel to publish, e.g. A-1.
        #[arg(long)]
        channel: String,
        /// Samples per second.
        #[arg(long, conflicts_with = "fast", default_value_t = 100.0)]
        rate: f64,
        /// As fast as the broker acknowledges.
        #[arg(long)]
        fast: bool,
        /// Samples per MQTT message (more than 1 sends JSON arrays).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Topic to publish on (default: from the first pipeline's filter).
        #[arg(long)]
        topic: Option<String>,
        /// QoS of the telemetry messages.
        #[arg(long, default_value_t = 1)]
        qos: u8,
        /// Publish only the first N samples.
        #[arg(long)]
        limit: Option<usize>,
        /// Write to this serial device or pseudo-terminal instead of MQTT.
        #[arg(long)]
        serial: Option<PathBuf>,
        /// Serial framing: kiss, slip, cobs or line.
        #[arg(long, default_value = "kiss", requires = "serial")]
        framing: gsinfer::ingest::framing::Framing,
        /// Serial payload: ccsds (space packets, from the configuration's
        /// mission database), json, csv or f32le.
        #[arg(long, default_value = "ccsds", requires = "serial")]
        payload: gsinfer::ingest::serial::SerialPayload,
        /// APID of the space packets (default: the packet feeding the channel).
        #[arg(long, requires = "serial")]
        apid: Option<u16>,
        /// Serial line speed, bit/s.
        #[arg(long, default_value_t = 115_200, requires = "serial")]
        baud: u32,
    },
    /// Measure an engine's throughput on one model and batch size.
    Bench {
        /// Configuration file (model repository and pipelines).
        #[arg(long, short)]
        config: PathBuf,
        /// Model to run.
        #[arg(long)]
        model: String,
        /// Windows per batch.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Seconds to keep timing (at least 10 batches are timed).
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Intra-op threads (default: engine.threads of the configuration).
        #[arg(long)]
        threads: Option<usize>,
        /// Engine: auto, tract or onnxruntime (default: the pipeline's engine).
        #[arg(long)]
        engine: Option<gsinfer::engine::EngineChoice>,
        /// One JSON line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the pipeline offline over the test split and print scores and events.
    Eval {
        /// Configuration file (model and pipeline).
        #[arg(long, short)]
        config: PathBuf,
        /// Data set root in the telemanom layout.
        #[arg(long, env = "GSINFER_DATA_DIR")]
        data_dir: PathBuf,
        /// Channels to evaluate.
        #[arg(long, required_unless_present = "all")]
        channel: Vec<String>,
        /// Evaluate every channel under `<data-dir>/test/`.
        #[arg(long)]
        all: bool,
        /// Model to evaluate (default: the first pipeline's); `{channel}`
        /// stands for the channel, e.g. `lstm_{channel}`.
        #[arg(long, conflicts_with = "ensemble")]
        model: Option<String>,
        /// Evaluate this `[[ensemble]]`: every member pipeline on each
        /// channel, their anomalies fused by the ensemble's vote.
        #[arg(long)]
        ensemble: Option<String>,
        /// One JSON object per line: every score and event (with --metrics:
        /// events, per-channel metrics, and a last line with the total).
        #[arg(long)]
        json: bool,
        /// Event-level precision, recall and F1 against labeled_anomalies.csv.
        #[arg(long)]
        metrics: bool,
        /// Replace every pipeline's threshold: ndt, pot, pot:<risk>,
        /// static:<value>, or a method with keys (ndt:min_errors=2100,ignore_first=500);
        /// repeat it to evaluate several on the same model outputs.
        #[arg(long, value_parser = gsinfer::score::ThresholdConfig::parse_spec)]
        threshold: Vec<gsinfer::score::ThresholdConfig>,
        /// Channels evaluated in parallel (default: the number of CPUs).
        #[arg(long)]
        jobs: Option<usize>,
        /// Prime each channel's pipeline with the last N rows of its train
        /// split before the test split, as a box primed from the archive
        /// would be: windows, smoothing and threshold history are warm at
        /// the first test sample; scores of the primed rows are not reported.
        #[arg(long, default_value_t = 0)]
        prime: usize,
    },
}

fn load(config: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(config).map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::from(2)
    })
}

#[derive(Debug, Subcommand)]
enum EngineCommand {
    /// Build the plans that are missing, stale or corrupt (all with --force).
    Build {
        /// Configuration file (TOML).
        #[arg(long, short, default_value = "/etc/gsinfer/gsinfer.toml")]
        config: PathBuf,
        /// Only this model.
        #[arg(long)]
        model: Option<String>,
        /// Rebuild even fresh plans.
        #[arg(long)]
        force: bool,
    },
    /// Show each model's engine, plan state, key, profiles and layers.
    Inspect {
        /// Configuration file (TOML).
        #[arg(long, short, default_value = "/etc/gsinfer/gsinfer.toml")]
        config: PathBuf,
        /// Only this model.
        #[arg(long)]
        model: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    gsinfer::logging::init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    };
    match cli.command {
        Command::CheckConfig { config } => {
            let c = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            print!("{}", c.to_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config, no_rebuild } => {
            let mut c = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            if no_rebuild {
                c.tensorrt.rebuild_at_start = false;
            }
            if let Err(e) = gsinfer::status::process::purge_in_background() {
                log::warn!("freed memory returns to the system only while allocating: {e}");
            }
            runtime()?.block_on(gsinfer::service::run(c))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Engine(EngineCommand::Build {
            config,
            model,
            force,
        }) => {
            let c = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let failed = gsinfer::cli::engine::build(&c, model.as_deref(), force)?;
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Engine(EngineCommand::Inspect { config, model }) => {
            let c = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            print!("{}", gsinfer::cli::engine::inspect(&c, model.as_deref())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Selftest {
            config,
            cuda,
            tolerance,
        } => {
            let c = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let (report, ok) = gsinfer::cli::selftest::run(&c, cuda, tolerance)?;
            print!("{report}");
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Replay {
            config,
            data_dir,
            channel,
            rate,
            fast,
            batch,
            topic,
            qos,
            limit,
            serial,
            framing,
            payload,
            apid,
            baud,
        } => {
            let c = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let opts = gsinfer::cli::replay::ReplayOptions {
                data_dir,
                channel,
                rate: (!fast).then_some(rate),
                batch,
                topic,
                qos,
                start_ns: gsinfer::eval::DEFAULT_START_NS,
                step_ns: gsinfer::eval::DEFAULT_STEP_NS,
                limit,
            };
            let stats = match serial {
                Some(device) => {
                    let target = gsinfer::cli::replay::SerialTarget {
                        device,
                        baud_rate: baud,
                        framing,
                        payload,
                        apid,
                    };
                    runtime()?.block_on(gsinfer::cli::replay::run_serial(&c, &opts, &target))?
                }
                None => runtime()?.block_on(gsinfer::cli::replay::run(&c, &opts))?,
            };
            eprintln!(
                "replayed {} samples of {} in {} messages in {:.1} s ({:.0} samples/s)",
                stats.samples,
                opts.channel,
                stats.messages,
                stats.seconds,
                stats.samples as f64 / stats.seconds.max(1e-9)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            config,
            model,
            batch,
            seconds,
            threads,
            engine,
            json,
        } => {
            let c = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let opts = gsinfer::cli::bench::BenchOptions {
                model,
                batch: batch.max(1),
                min_time: std::time::Duration::from_secs_f64(seconds),
                engine,
                threads,
            };
            let r = gsinfer::cli::bench::run(&c, &opts)?;
            if json {
                println!("{}", r.to_json());
            } else {
                println!(
                    "{} on {}: batch {}: {:.0} windows/s, {:.3} ms per batch (median of {})",
                    r.model,
                    r.engine_detail,
                    r.batch,
                    r.windows_per_s,
                    r.ms_per_batch,
                    r.iterations
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval {
            config,
            data_dir,
            channel,
            all,
            model,
            ensemble,
            json,
            metrics,
            threshold,
            jobs,
            prime,
        } => {
            let c = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let opts = gsinfer::eval::EvalOptions {
                data_dir,
                channels: if all { Vec::new() } else { channel },
                model,
                ensemble,
                thresholds: threshold,
                metrics,
                json,
                prime,
                jobs: jobs.unwrap_or_else(|| {
                    std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(1)
                }),
            };
            let stdout = std::io::stdout();
            gsinfer::eval::run(&c, &opts, &mut stdout.lock())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
