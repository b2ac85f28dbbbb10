//! `gsinfer eval`: the pipeline run offline over the test split of a data
//! set in the telemanom layout, without MQTT. It feeds the same
//! [`Pipeline`] the service uses, sample by sample, so its scores are the
//! reference the streaming path must match.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::config::{Config, PipelineConfig};
use crate::infer::run_batch;
use crate::ingest::decode::RawSample;
use crate::model::{open_engine, prepare};
use crate::pipeline::{ChannelOutput, Pipeline};
use crate::publish::{event_json, score_json};
use crate::repository::ModelRepository;
use crate::score::{ScoredOutput, WindowOutcome};

/// Default time stamp of sample 0 in `eval` and `replay`: 2018-01-01T00:00:00Z, in ns.
pub const DEFAULT_START_NS: i64 = 1_514_764_800_000_000_000;
/// Default time between samples in `eval` and `replay`: one minute, in ns
/// (about one SMAP telemetry step).
pub const DEFAULT_STEP_NS: i64 = 60_000_000_000;

/// Reads `<data_dir>/test/<channel>.npy` (`[T, F]` float64 or float32) as rows of f32.
///
/// # Errors
/// When the file is missing, not a 2-D float array, or unreadable.
pub fn read_channel(data_dir: &Path, split: &str, channel: &str) -> Result<Vec<Vec<f32>>> {
    let path = data_dir.join(split).join(format!("{channel}.npy"));
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "cannot read {}; check --data-dir and the channel name",
            path.display()
        )
    })?;
    let npy = npyz::NpyFile::new(&bytes[..])
        .with_context(|| format!("{} is not a .npy file", path.display()))?;
    let shape = npy.shape().to_vec();
    if shape.len() != 2 {
        bail!(
            "{}: expected a 2-D array [T, F], found shape {shape:?}",
            path.display()
        );
    }
    let cols = shape[1] as usize;
    let flat: Vec<f32> = match npy.dtype() {
        npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Float && t.size_field() == 8 => {
            npy.into_vec::<f64>()?
                .into_iter()
                .map(|v| v as f32)
                .collect()
        }
        npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Float && t.size_field() == 4 => {
            npy.into_vec::<f32>()?
        }
        other => bail!(
            "{}: expected float64 or float32 data, found {other:?}",
            path.display()
        ),
    };
    Ok(flat.chunks(cols).map(|c| c.to_vec()).collect())
}

/// Channels with a file under `<data_dir>/test/`, sorted.
///
/// # Errors
/// When the folder cannot be read.
pub fn list_channels(data_dir: &Path) -> Result<Vec<String>> {
    let dir = data_dir.join("test");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}; check --data-dir", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".npy"))
                .map(String::from)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// The result of evaluating one channel.
#[derive(Debug)]
pub struct ChannelEval {
    /// Channel name.
    pub channel: String,
    /// Samples fed.
    pub samples: usize,
    /// Scores and events in the order the pipeline produced them.
    pub outputs: Vec<ScoredOutput>,
    /// Seconds of engine time.
    pub engine_s: f64,
    /// Windows run.
    pub windows: usize,
}

/// Runs `pipeline` over `rows` exactly as the service would, batching
/// windows into the largest bucket.
///
/// # Errors
/// When the model cannot be loaded or run.
pub fn eval_channel(
    repo: &ModelRepository,
    pipeline: &PipelineConfig,
    channel: &str,
    rows: &[Vec<f32>],
    start_ns: i64,
    step_ns: i64,
) -> Result<ChannelEval> {
    let prepared = prepare(repo, pipeline)?;
    let mut engine = open_engine(&prepared)?;
    let max_batch = *prepared.buckets.last().expect("buckets are non-empty");
    let mut p = Pipeline::new(pipeline);
    let now = Instant::now();
    let mut outs: Vec<ChannelOutput> = Vec::new();
    let mut pending = Vec::new();
    let mut input = Vec::new();
    let (mut engine_s, mut windows) = (0.0, 0);
    let flush = |p: &mut Pipeline,
                 pending: &mut Vec<_>,
                 outs: &mut Vec<ChannelOutput>,
                 engine: &mut Box<dyn crate::engine::Engine>,
                 input: &mut Vec<f32>|
     -> Result<f64> {
        if pending.is_empty() {
            return Ok(0.0);
        }
        let items: Vec<_> = std::mem::take(pending);
        let bucket = prepared
            .buckets
            .iter()
            .copied()
            .find(|b| *b >= items.len())
            .unwrap_or(max_batch);
        let t = Instant::now();
        let rows = run_batch(engine.as_mut(), &items, bucket, input)?;
        let spent = t.elapsed().as_secs_f64();
        for (mut item, output) in items.into_iter().zip(rows) {
            let values = std::mem::take(&mut item.values);
            p.on_window(
                &item,
                WindowOutcome::Output {
                    output,
                    input: values,
                },
                outs,
            );
        }
        Ok(spent)
    };
    for (i, row) in rows.iter().enumerate() {
        let sample = RawSample {
            t_ns: None,
            seq: Some(i as u64),
            values: row.clone(),
        };
        let t = start_ns + i as i64 * step_ns;
        match p.on_sample(channel, t, &sample, now, &mut outs) {
            Ok(Some(w)) => {
                pending.push(w);
                windows += 1;
                if pending.len() == max_batch {
                    engine_s += flush(&mut p, &mut pending, &mut outs, &mut engine, &mut input)?;
                }
            }
            Ok(None) => {}
            Err(r) => bail!("channel {channel} row {i}: {r}"),
        }
    }
    engine_s += flush(&mut p, &mut pending, &mut outs, &mut engine, &mut input)?;
    Ok(ChannelEval {
        channel: channel.into(),
        samples: rows.len(),
        outputs: outs.into_iter().map(|o| o.output).collect(),
        engine_s,
        windows,
    })
}

/// Options of `gsinfer eval`.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Data set root (telemanom layout).
    pub data_dir: PathBuf,
    /// Channels to run; empty means all under `test/`.
    pub channels: Vec<String>,
    /// Model to run; `None` takes the first pipeline.
    pub model: Option<String>,
    /// One JSON object per line instead of a summary.
    pub json: bool,
    /// Channels evaluated in parallel.
    pub jobs: usize,
}

/// Runs `gsinfer eval` and writes its report to `out`.
///
/// # Errors
/// Unknown model, unreadable data, engine failures.
pub fn run(config: &Config, opts: &EvalOptions, out: &mut dyn Write) -> Result<()> {
    let pipeline = match &opts.model {
        Some(m) => config
            .pipelines
            .iter()
            .find(|p| &p.model == m)
            .with_context(|| format!("no [[pipeline]] serves model {m}"))?,
        None => &config.pipelines[0],
    };
    let repo = ModelRepository::open(&config.repository.path)?;
    let channels = if opts.channels.is_empty() {
        list_channels(&opts.data_dir)?
    } else {
        opts.channels.clone()
    };
    let labels = crate::labels::read_labels(&opts.data_dir).unwrap_or_default();
    let jobs = opts.jobs.max(1).min(channels.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Result<ChannelEval>>>> =
        channels.iter().map(|_| Default::default()).collect();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(ch) = channels.get(i) else { break };
                let r = read_channel(&opts.data_dir, "test", ch).and_then(|rows| {
                    eval_channel(
                        &repo,
                        pipeline,
                        ch,
                        &rows,
                        DEFAULT_START_NS,
                        DEFAULT_STEP_NS,
                    )
                });
                *results[i].lock().expect("result slot") = Some(r);
            });
        }
    });
    let model = &pipeline.model;
    let (mut n_events, mut n_true, mut n_labels, mut n_found) = (0usize, 0usize, 0usize, 0usize);
    for slot in results {
        let r = slot
            .into_inner()
            .expect("result slot")
            .expect("every channel ran")?;
        let events: Vec<_> = r
            .outputs
            .iter()
            .filter_map(|o| match o {
                ScoredOutput::Event(e) => Some(e),
                _ => None,
            })
            .collect();
        if opts.json {
            for o in &r.outputs {
                let v = match o {
                    ScoredOutput::Score(s) => score_json(model, &r.channel, s),
                    ScoredOutput::Event(e) => event_json(model, &r.channel, e),
                };
                writeln!(out, "{v}")?;
            }
            continue;
        }
        let scores: Vec<f32> = r
            .outputs
            .iter()
            .filter_map(|o| match o {
                ScoredOutput::Score(s) => Some(s.score),
                _ => None,
            })
            .collect();
        let max = scores.iter().copied().fold(f32::NAN, f32::max);
        let wps = if r.engine_s > 0.0 {
            r.windows as f64 / r.engine_s
        } else {
            0.0
        };
        writeln!(
            out,
            "{model} {}: {} samples, {} scores (max {max:.4}), {:.0} windows/s",
            r.channel,
            r.samples,
            scores.len(),
            wps
        )?;
        let chan_labels = labels.get(&r.channel).cloned().unwrap_or_default();
        // Every anomaly: the closed ones, and one still open at the end.
        let mut closed: Vec<(u64, u64)> = events
            .iter()
            .filter_map(|e| e.end.map(|end| (e.start, end)))
            .collect();
        if let Some(open) = events.last().filter(|e| e.end.is_none()) {
            closed.push((open.start, u64::MAX));
        }
        n_events += closed.len();
        n_true += closed
            .iter()
            .filter(|(s, e)| chan_labels.iter().any(|(a, b)| s <= b && e >= a))
            .count();
        n_labels += chan_labels.len();
        n_found += chan_labels
            .iter()
            .filter(|(a, b)| closed.iter().any(|(s, e)| s <= b && e >= a))
            .count();
        for e in events.iter().filter(|e| e.end.is_some()) {
            let end = e.end.unwrap_or(e.start);
            let hit = chan_labels.iter().any(|(a, b)| e.start <= *b && end >= *a);
            writeln!(
                out,
                "  anomaly {}..={end} max score {:.4}{}",
                e.start,
                e.max_score,
                if hit { " (overlaps a label)" } else { "" }
            )?;
        }
        if let Some(open) = events.last().filter(|e| e.end.is_none()) {
            writeln!(
                out,
                "  anomaly {}.. still open at the end of the data",
                open.start
            )?;
        }
        for (a, b) in &chan_labels {
            writeln!(out, "  labelled {a}..={b}")?;
        }
    }
    if !opts.json && !labels.is_empty() {
        writeln!(
            out,
            "total: {n_events} anomalies, {n_true} overlap a labelled interval (event precision {:.2}); \
             {n_found} of {n_labels} labelled intervals overlapped by an anomaly (recall {:.2})",
            n_true as f64 / n_events.max(1) as f64,
            n_found as f64 / n_labels.max(1) as f64
        )?;
    }
    Ok(())
}
