//! `gsinfer eval`: the pipeline run offline over the test split of a data
//! set in the telemanom layout, without MQTT. It feeds the same
//! [`Pipeline`] the service uses, sample by sample, so its scores are the
//! reference the streaming path must match.

pub mod detection;
pub mod labels;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::config::{Config, EngineSettings, PipelineConfig};
use crate::engine::prepare::{open_engine, prepare};
use crate::eval::detection::Detection;
use crate::infer::run_batch;
use crate::ingest::decode::RawSample;
use crate::pipeline::{ChannelOutput, Pipeline};
use crate::publish::{event_json, score_json};
use crate::repository::ModelRepository;
use crate::score::{ChannelFusion, EnsembleConfig, ThresholdConfig};
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

/// The column count `F` of `<data_dir>/test/<channel>.npy`, from its header
/// alone; `None` when the file is missing, unreadable or not a 2-D array
/// (reading the channel then says why).
pub fn npy_columns(data_dir: &Path, channel: &str) -> Option<usize> {
    let path = data_dir.join("test").join(format!("{channel}.npy"));
    let file = std::fs::File::open(path).ok()?;
    match npyz::NpyFile::new(std::io::BufReader::new(file))
        .ok()?
        .shape()
    {
        [_, cols] => Some(*cols as usize),
        _ => None,
    }
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
    /// The threshold the scores and events were made with.
    pub threshold: ThresholdConfig,
    /// Samples fed.
    pub samples: usize,
    /// Scores and events in the order the pipeline produced them.
    pub outputs: Vec<ScoredOutput>,
    /// Seconds of engine time.
    pub engine_s: f64,
    /// Windows run.
    pub windows: usize,
}

impl ChannelEval {
    /// Forgets the first `n` rows, as if the stream had started at row `n`:
    /// their scores go, an event ending before row `n` goes, one spanning it
    /// starts at `n`; indices are shifted down by `n`.
    pub fn drop_prefix(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let cut = n as u64;
        self.samples = self.samples.saturating_sub(n);
        self.outputs.retain_mut(|o| match o {
            ScoredOutput::Score(s) => {
                s.index = match s.index.checked_sub(cut) {
                    Some(i) => i,
                    None => return false,
                };
                true
            }
            ScoredOutput::Event(e) => {
                // An anomaly_start in the prefix is dropped; its end, after
                // the prefix, still carries the run (clipped to row `n`).
                if e.end.map_or(e.start < cut, |end| end < cut) {
                    return false;
                }
                e.start = e.start.max(cut) - cut;
                e.end = e.end.map(|end| end - cut);
                true
            }
        });
    }
}

/// The test split of `channel`, preceded by the last `prime` rows of its
/// train split; returns the rows and how many were primed.
///
/// # Errors
/// When a split cannot be read.
pub fn primed_rows(data_dir: &Path, channel: &str, prime: usize) -> Result<(Vec<Vec<f32>>, usize)> {
    let test = read_channel(data_dir, "test", channel)?;
    if prime == 0 {
        return Ok((test, 0));
    }
    let mut rows = read_channel(data_dir, "train", channel)?;
    let skip = rows.len().saturating_sub(prime);
    rows.drain(..skip);
    let primed = rows.len();
    rows.extend(test);
    Ok((rows, primed))
}

/// Runs `pipeline` over `rows` exactly as the service would, batching
/// windows into the largest bucket; once per threshold in `thresholds`
/// (the pipeline's own when empty), running the engine only once, on the
/// pipeline's engine with the `[engine]` settings `engine`. Row `i` is
/// stamped [`DEFAULT_START_NS`] + `i` × [`DEFAULT_STEP_NS`].
///
/// # Errors
/// When the model cannot be loaded or run, or a row is rejected.
pub fn eval_channel(
    repo: &ModelRepository,
    pipeline: &PipelineConfig,
    engine: &EngineSettings,
    thresholds: &[ThresholdConfig],
    channel: &str,
    rows: &[Vec<f32>],
) -> Result<Vec<ChannelEval>> {
    let (start_ns, step_ns) = (DEFAULT_START_NS, DEFAULT_STEP_NS);
    let prepared = prepare(repo, pipeline)?;
    let mut engine = open_engine(&prepared, pipeline.engine, engine)?;
    let max_batch = *prepared.buckets.last().expect("buckets are non-empty");
    let now = Instant::now();
    let samples: Vec<(i64, RawSample)> = rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            (
                start_ns + i as i64 * step_ns,
                RawSample {
                    t_ns: None,
                    seq: Some(i as u64),
                    values: row.clone(),
                },
            )
        })
        .collect();
    // Cut every window, run them in full batches, keep each outcome.
    let mut cutter = Pipeline::new(pipeline);
    let mut discard = Vec::new();
    let mut windows = Vec::new();
    for (i, (t, sample)) in samples.iter().enumerate() {
        match cutter.on_sample(channel, *t, sample, now, &mut discard) {
            Ok(Some(w)) => windows.push(w),
            Ok(None) => {}
            Err(r) => bail!("channel {channel} row {i}: {r}"),
        }
    }
    let mut outcomes = Vec::with_capacity(windows.len());
    let mut input = Vec::new();
    let mut engine_s = 0.0;
    for chunk in windows.chunks(max_batch) {
        let bucket = prepared
            .buckets
            .iter()
            .copied()
            .find(|b| *b >= chunk.len())
            .unwrap_or(max_batch);
        let t = Instant::now();
        let outputs = run_batch(engine.as_mut(), chunk, bucket, &mut input)?;
        engine_s += t.elapsed().as_secs_f64();
        for (item, output) in chunk.iter().zip(outputs) {
            outcomes.push(WindowOutcome::Output {
                output,
                input: item.values.clone(),
            });
        }
    }
    // Score: samples first, then the outcomes in window order. The pipeline
    // scores in window order whatever the interleaving, so this equals the
    // service's result for any arrival timing.
    let own = [pipeline.scoring.threshold.clone()];
    let variants = if thresholds.is_empty() {
        &own[..]
    } else {
        thresholds
    };
    let mut evals = Vec::new();
    for threshold in variants {
        let mut config = pipeline.clone();
        config.scoring.threshold = threshold.clone();
        let mut p = Pipeline::new(&config);
        let mut outs: Vec<ChannelOutput> = Vec::new();
        for (t, sample) in &samples {
            p.on_sample(channel, *t, sample, now, &mut outs)?;
        }
        for (item, outcome) in windows.iter().zip(&outcomes) {
            p.on_window(item, outcome.clone(), &mut outs);
        }
        evals.push(ChannelEval {
            channel: channel.into(),
            threshold: threshold.clone(),
            samples: rows.len(),
            outputs: outs.into_iter().map(|o| o.output).collect(),
            engine_s,
            windows: windows.len(),
        });
    }
    Ok(evals)
}

/// Options of `gsinfer eval`.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Data set root (telemanom layout).
    pub data_dir: PathBuf,
    /// Channels to run; empty means all under `test/`.
    pub channels: Vec<String>,
    /// Only the pipeline serving this model (`{channel}` stands for the
    /// channel's name, e.g. `lstm_{channel}`); `None`: each channel goes to
    /// the pipeline that lists it in `channels`, else to the first with no list.
    pub model: Option<String>,
    /// Evaluate this `[[ensemble]]` instead of one pipeline per channel.
    pub ensemble: Option<String>,
    /// Replaces every pipeline's threshold (`--threshold`, repeatable: each
    /// is evaluated on the same engine outputs); empty keeps the pipelines' own.
    pub thresholds: Vec<ThresholdConfig>,
    /// Event-level precision, recall and F1 against `labeled_anomalies.csv`.
    pub metrics: bool,
    /// One JSON object per line instead of text.
    pub json: bool,
    /// Channels evaluated in parallel.
    pub jobs: usize,
    /// Rows from the end of each channel's train split fed before its test
    /// split (0: none); their scores and events are not reported and the
    /// test split's indices start at 0 as without priming.
    pub prime: usize,
}

/// The pipeline that serves `channel` in `config` (see [`EvalOptions::model`]).
pub fn pipeline_for<'a>(
    config: &'a Config,
    channel: &str,
    model: Option<&str>,
) -> Option<&'a PipelineConfig> {
    let candidates = || {
        config
            .pipelines
            .iter()
            .filter(|p| model.is_none_or(|m| p.model == m))
    };
    candidates()
        .find(|p| p.channels.iter().any(|c| c == channel))
        .or_else(|| candidates().find(|p| p.channels.is_empty()))
}

/// The anomalies of a channel's events as inclusive intervals; one still
/// open at the end of the data runs to `u64::MAX`.
pub fn anomalies(events: &[&crate::score::AnomalyEvent]) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u64)> = events
        .iter()
        .filter_map(|e| e.end.map(|end| (e.start, end)))
        .collect();
    if let Some(open) = events.last().filter(|e| e.end.is_none()) {
        spans.push((open.start, u64::MAX));
    }
    spans
}

/// Runs `gsinfer eval` and writes its report to `out`.
///
/// # Errors
/// A channel no pipeline serves, unreadable data, engine failures.
pub fn run(config: &Config, opts: &EvalOptions, out: &mut dyn Write) -> Result<()> {
    let repo = ModelRepository::open(&config.repository.path)?;
    let every = opts.channels.is_empty();
    let listed = if every {
        list_channels(&opts.data_dir)?
    } else {
        opts.channels.clone()
    };
    // With --all, a channel of the data set that no pipeline serves (or
    // whose feature count differs from its pipeline's) is skipped and said
    // so; a channel named on the command line must be served.
    let ensemble = match &opts.ensemble {
        None => None,
        Some(name) => Some(
            config
                .ensembles
                .iter()
                .find(|e| e.name == *name)
                .with_context(|| format!("no [[ensemble]] is named {name}"))?,
        ),
    };
    // A trusted-vote ensemble's members that alarmed on their nominal data.
    let distrusted = match ensemble {
        Some(e) if e.trusted_only => {
            crate::engine::prepare::distrusted(&repo, listed.iter().flat_map(|ch| e.members(ch)))
        }
        _ => Default::default(),
    };
    let mut channels = Vec::new();
    let mut pipelines: Vec<Vec<PipelineConfig>> = Vec::new();
    let mut skipped: Vec<(String, String)> = Vec::new();
    for ch in &listed {
        let served = match ensemble {
            None => pipeline_for(
                config,
                ch,
                opts.model
                    .as_ref()
                    .map(|m| m.replace("{channel}", ch))
                    .as_deref(),
            )
            .map(|p| vec![p.clone()])
            .ok_or_else(|| {
                "no [[pipeline]] serves it (add it to a pipeline's channels or pass --model)"
                    .to_string()
            }),
            Some(e) => e
                .voters(ch, &distrusted)
                .iter()
                .map(|m| {
                    pipeline_for(config, ch, Some(m)).cloned().ok_or_else(|| {
                        format!(
                            "ensemble {}: no [[pipeline]] of member {m} serves it",
                            e.name
                        )
                    })
                })
                .collect(),
        };
        let served = match served {
            Ok(p) => p,
            Err(why) if every => {
                skipped.push((ch.clone(), why));
                continue;
            }
            Err(why) => bail!("channel {ch}: {why}"),
        };
        if every {
            if let Some(f) = npy_columns(&opts.data_dir, ch) {
                if let Some(p) = served.iter().find(|p| p.features != f) {
                    skipped.push((
                        ch.clone(),
                        format!(
                            "its data has {f} features, pipeline {} takes {}",
                            p.model, p.features
                        ),
                    ));
                    continue;
                }
            }
        }
        channels.push(ch.clone());
        pipelines.push(served);
    }
    for (ch, why) in &skipped {
        if opts.json {
            let line = serde_json::json!({"type": "skipped", "channel": ch, "reason": why});
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "skipped {ch}: {why}")?;
        }
    }
    if channels.is_empty() {
        bail!(
            "no channel of {} is served by this configuration ({} skipped)",
            opts.data_dir.display(),
            skipped.len()
        );
    }
    let spacecraft = crate::eval::labels::read_spacecraft(&opts.data_dir);
    let labels = match crate::eval::labels::read_labels(&opts.data_dir) {
        Ok(l) => l,
        Err(e) if opts.metrics => return Err(e.context("--metrics needs the labels")),
        Err(_) => Default::default(),
    };
    let jobs = opts.jobs.max(1).min(channels.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Result<Vec<ChannelEval>>>>> =
        channels.iter().map(|_| Default::default()).collect();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(ch) = channels.get(i) else { break };
                let r = primed_rows(&opts.data_dir, ch, opts.prime).and_then(|(rows, primed)| {
                    let members = pipelines[i]
                        .iter()
                        .map(|p| {
                            let mut evals = eval_channel(
                                &repo,
                                p,
                                &config.engine,
                                &opts.thresholds,
                                ch,
                                &rows,
                            )?;
                            evals.iter_mut().for_each(|e| e.drop_prefix(primed));
                            Ok(evals)
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Ok(match ensemble {
                        None => members.into_iter().next().expect("one pipeline"),
                        Some(e) => fuse_channel(e, members),
                    })
                });
                *results[i].lock().expect("result slot") = Some(r);
            });
        }
    });
    let mut evals = Vec::new();
    for slot in results {
        evals.push(
            slot.into_inner()
                .expect("result slot")
                .expect("every channel ran")?,
        );
    }
    let variants = evals.first().map_or(0, |e| e.len());
    for v in 0..variants {
        let mut per_channel = Vec::new();
        let threshold = serde_json::to_value(&evals[0][v].threshold)?;
        if !opts.json && variants > 1 {
            writeln!(out, "== threshold {threshold}")?;
        }
        for (channel_evals, served) in evals.iter().zip(&pipelines) {
            let r = &channel_evals[v];
            let model = ensemble.map_or(served[0].model.as_str(), |e| e.name.as_str());
            per_channel.push(report_channel(r, model, &labels, opts, &threshold, out)?);
        }
        let total = Detection::total(&per_channel);
        // Per spacecraft (labeled_anomalies.csv's column) when there are several.
        let mut crafts: Vec<&str> = channels
            .iter()
            .filter_map(|c| spacecraft.get(c).map(String::as_str))
            .collect();
        crafts.sort_unstable();
        crafts.dedup();
        if crafts.len() > 1 && !labels.is_empty() {
            for craft in crafts {
                let of = |c: &String| spacecraft.get(c).is_some_and(|s| s == craft);
                let parts: Vec<&Detection> = per_channel
                    .iter()
                    .zip(&channels)
                    .filter(|(_, c)| of(c))
                    .map(|(d, _)| d)
                    .collect();
                let days: f64 = evals
                    .iter()
                    .zip(&channels)
                    .filter(|(_, c)| of(c))
                    .map(|(e, _)| telemetry_days(e[v].samples))
                    .sum();
                let t = Detection::total(parts.iter().copied());
                write_total(out, opts.json, &threshold, craft, parts.len(), &t, days)?;
            }
        }
        let days: f64 = evals.iter().map(|e| telemetry_days(e[v].samples)).sum();
        if !labels.is_empty() && (opts.metrics || !opts.json) {
            write_total(
                out,
                opts.json,
                &threshold,
                "all",
                channels.len(),
                &total,
                days,
            )?;
        }
        if opts.json && opts.metrics {
            let line = serde_json::json!({"type": "total", "threshold": threshold, "channels": channels.len(), "skipped": skipped.len(), "total": total});
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

/// Fuses the members' evaluations of one channel (each with the same
/// threshold variants, in the same order) by `ensemble`'s vote: the members'
/// outputs are handed to one [`ChannelFusion`] in decision-index order, as
/// a service would see them when the members keep pace. The result holds
/// the fused events only.
pub fn fuse_channel(ensemble: &EnsembleConfig, members: Vec<Vec<ChannelEval>>) -> Vec<ChannelEval> {
    let variants = members.first().map_or(0, Vec::len);
    (0..variants)
        .map(|v| {
            let mut fusion = ChannelFusion::new(ensemble, members.len());
            let mut events = Vec::new();
            let mut next = vec![0usize; members.len()];
            let index = |o: &ScoredOutput| match o {
                ScoredOutput::Score(s) => s.index,
                ScoredOutput::Event(e) => e.end.unwrap_or(e.start),
            };
            // k-way merge on each member's decision index.
            while let Some(m) = (0..members.len())
                .filter(|m| next[*m] < members[*m][v].outputs.len())
                .min_by_key(|m| index(&members[*m][v].outputs[next[*m]]))
            {
                fusion.observe(m, &members[m][v].outputs[next[m]], &mut events);
                next[m] += 1;
            }
            let first = &members[0][v];
            ChannelEval {
                channel: first.channel.clone(),
                threshold: first.threshold.clone(),
                samples: first.samples,
                outputs: events.into_iter().map(ScoredOutput::Event).collect(),
                engine_s: members.iter().map(|m| m[v].engine_s).sum(),
                windows: members.iter().map(|m| m[v].windows).sum(),
            }
        })
        .collect()
}

/// Days of flight time in `samples` samples at [`DEFAULT_STEP_NS`] apart.
fn telemetry_days(samples: usize) -> f64 {
    samples as f64 * DEFAULT_STEP_NS as f64 / 86_400e9
}

/// Writes one summary line: a group's counts, F1, F0.5 and false alarms
/// per day of telemetry.
fn write_total(
    out: &mut dyn Write,
    json: bool,
    threshold: &serde_json::Value,
    group: &str,
    channels: usize,
    t: &Detection,
    days: f64,
) -> Result<()> {
    let per_day = if days > 0.0 {
        t.false_positives as f64 / days
    } else {
        0.0
    };
    if json {
        let line = serde_json::json!({"type": "group", "group": group, "threshold": threshold,
            "channels": channels, "telemetry_days": days, "false_alarms_per_day": per_day, "total": t});
        writeln!(out, "{line}")?;
    } else {
        writeln!(
            out,
            "{group}: {channels} channels, {days:.1} days: tp {} fp {} fn {}: precision {:.3} recall {:.3} f1 {:.3} f0.5 {:.3}, {per_day:.3} false alarms/day",
            t.true_positives, t.false_positives, t.false_negatives, t.precision, t.recall, t.f1, t.f05
        )?;
    }
    Ok(())
}

/// Writes one channel's part of the report and returns its detection counts.
fn report_channel(
    r: &ChannelEval,
    model: &str,
    labels: &crate::eval::labels::Labels,
    opts: &EvalOptions,
    threshold: &serde_json::Value,
    out: &mut dyn Write,
) -> Result<Detection> {
    let events: Vec<_> = r
        .outputs
        .iter()
        .filter_map(|o| match o {
            ScoredOutput::Event(e) => Some(e),
            _ => None,
        })
        .collect();
    let chan_labels = labels.get(&r.channel).cloned().unwrap_or_default();
    let predicted = anomalies(&events);
    // The first sample a decision was published for: how long the channel
    // was silent after its first sample (None: never decided).
    let first_decided = r.outputs.iter().find_map(|o| match o {
        ScoredOutput::Score(s) => Some(s.index),
        ScoredOutput::Event(_) => None,
    });
    let detection = Detection::count(&predicted, &chan_labels);
    if opts.json {
        for o in &r.outputs {
            let v = match o {
                ScoredOutput::Score(_) if opts.metrics => continue,
                ScoredOutput::Score(s) => score_json(model, &r.channel, s),
                ScoredOutput::Event(e) => event_json(model, &r.channel, e),
            };
            writeln!(out, "{v}")?;
        }
        if opts.metrics {
            let line = serde_json::json!({"type": "metrics", "model": model, "channel": r.channel, "threshold": threshold,
                "samples": r.samples, "first_decided": first_decided,
                "labels": chan_labels, "anomalies": predicted, "detection": detection});
            writeln!(out, "{line}")?;
        }
        return Ok(detection);
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
    let first = first_decided.map_or("never".to_string(), |i| format!("from sample {i}"));
    writeln!(
        out,
        "{model} {}: {} samples, {} scores (max {max:.4}) {first}, {wps:.0} windows/s",
        r.channel,
        r.samples,
        scores.len()
    )?;
    for (start, end) in &predicted {
        let hit = chan_labels.iter().any(|(a, b)| start <= b && end >= a);
        let end = if *end == u64::MAX {
            "(open)".to_string()
        } else {
            end.to_string()
        };
        writeln!(
            out,
            "  anomaly {start}..={end}{}",
            if hit { " (overlaps a label)" } else { "" }
        )?;
    }
    for (a, b) in &chan_labels {
        writeln!(out, "  labelled {a}..={b}")?;
    }
    if opts.metrics {
        writeln!(
            out,
            "  tp {} fp {} fn {}: precision {:.3} recall {:.3} f1 {:.3}",
            detection.true_positives,
            detection.false_positives,
            detection.false_negatives,
            detection.precision,
            detection.recall,
            detection.f1
        )?;
    }
    Ok(detection)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::testing::{event, score};

    #[test]
    fn drop_prefix_shifts_scores_and_clips_events_that_span_the_cut() {
        let mut e = ChannelEval {
            channel: "A-1".into(),
            threshold: ThresholdConfig::Static { value: 1.0 },
            samples: 20,
            outputs: vec![
                score(3),
                event(2, None),
                event(2, Some(4)),
                event(8, None),
                score(10),
                event(8, Some(12)),
                event(14, None),
            ],
            engine_s: 0.0,
            windows: 0,
        };
        e.drop_prefix(10);
        assert_eq!(e.samples, 10);
        let kept: Vec<(u64, Option<u64>)> = e
            .outputs
            .iter()
            .map(|o| match o {
                ScoredOutput::Score(s) => (s.index, Some(s.index)),
                ScoredOutput::Event(ev) => (ev.start, ev.end),
            })
            .collect();
        assert_eq!(
            kept,
            vec![(0, Some(0)), (0, Some(2)), (4, None)],
            "scores before the cut and events ending before it go; one spanning it starts at 0"
        );
    }
}
