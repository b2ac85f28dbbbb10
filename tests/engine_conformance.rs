//! Engine conformance (STYLE.md habit 5): the same cases against every
//! engine compiled in and available on this machine. Each case is a shipped
//! model family, a batch-size bucket and seeded random windows; every
//! engine's outputs must match tract's (the reference: always compiled,
//! nothing to install) within a tolerance, and every row of a batch must
//! match that window run alone. Timings are never asserted here
//! (BENCHMARKS.md has them).
//!
//! onnxruntime is found as the service would find it when pointed at the
//! wheel: `$ORT_DYLIB_PATH`, else the `onnxruntime` Python package's
//! `capi/libonnxruntime.so*` (tests may ask python3 where it is; the service
//! never does). Without either the onnxruntime cases print `skipped: ...`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use gsinfer::config::{Config, EngineChoice, EngineSettings};
use gsinfer::engine::prepare::{open_engine, prepare, PreparedModel};
use gsinfer::engine::{Engine, EngineKind};
use gsinfer::repository::ModelRepository;
use rand::{Rng, SeedableRng};

/// One model per shipped family, and the configuration that serves it.
const CASES: [(&str, &str); 4] = [
    ("config/gsinfer.example.toml", "smap_lstm"),
    ("config/smap_lstm.toml", "lstm_A-1"),
    ("config/smap_tfm.toml", "tfm_A-1"),
    ("config/smap_vae.toml", "vae_A-1"),
];

/// |engine − tract| ≤ ATOL + RTOL·|tract| for every value.
const ATOL: f32 = 1e-4;
const RTOL: f32 = 1e-3;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `libonnxruntime.so` from `$ORT_DYLIB_PATH` or the Python wheel, if any.
fn onnxruntime_library() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import glob, os, onnxruntime; \
             print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so*')))[0])",
        ])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && path.is_file()).then_some(path)
}

/// Every engine to check against tract, with the settings that open it.
fn engines_under_test() -> Vec<(EngineChoice, EngineSettings)> {
    let mut engines = Vec::new();
    if cfg!(feature = "onnxruntime") {
        match onnxruntime_library() {
            Some(lib) => engines.push((
                EngineChoice::Onnxruntime,
                EngineSettings {
                    onnxruntime_library: Some(lib),
                    threads: 1,
                    ..EngineSettings::default()
                },
            )),
            None => common::skip(
                "onnxruntime cases (no ORT_DYLIB_PATH and no Python onnxruntime package: pip install onnxruntime)",
            ),
        }
    }
    engines
}

fn prepared(config: &str, model: &str) -> PreparedModel {
    let config = Config::load(&root().join(config)).unwrap_or_else(|e| panic!("{e}"));
    let pipeline = config
        .pipelines
        .iter()
        .find(|p| p.model == model)
        .unwrap_or_else(|| panic!("no pipeline serves {model}"));
    let repo = ModelRepository::open(&config.repository.path).unwrap();
    prepare(&repo, pipeline).unwrap()
}

fn windows(seed: u64, n: usize, item_len: usize) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n * item_len)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect()
}

/// The largest |a − b| − RTOL·|b|, and whether every value is within tolerance.
fn compare(got: &[f32], want: &[f32]) -> (f32, bool) {
    assert_eq!(got.len(), want.len());
    let mut worst = 0.0f32;
    let mut ok = true;
    for (g, w) in got.iter().zip(want) {
        let err = (g - w).abs();
        ok &= g.is_finite() && err <= ATOL + RTOL * w.abs();
        worst = worst.max(err);
    }
    (worst, ok)
}

/// Runs every bucket of `model` on `engine` twice: the second pass must give
/// the first pass's outputs (no state may leak from one batch into the next,
/// as a reused tract state once carried an LSTM's).
fn check_repeatable(model: &PreparedModel, engine: &mut dyn Engine) {
    let item_len = model.input.item_len();
    let mut first = Vec::new();
    for &bucket in &model.buckets {
        first.push(
            engine
                .infer(bucket, &[&windows(bucket as u64, bucket, item_len)])
                .unwrap(),
        );
    }
    for (&bucket, want) in model.buckets.iter().zip(&first).rev() {
        let got = engine
            .infer(bucket, &[&windows(bucket as u64, bucket, item_len)])
            .unwrap();
        for (g, w) in got.iter().zip(want) {
            let (worst, ok) = compare(g, w);
            assert!(
                ok,
                "{} on {}: bucket {bucket} differs on a second run by {worst:e}",
                model.entry.name,
                engine.kind()
            );
        }
    }
}

/// Runs every bucket of `model` on `engine` and on tract and compares.
fn check(model: &PreparedModel, tract: &mut dyn Engine, engine: &mut dyn Engine) {
    let name = &model.entry.name;
    assert_eq!(engine.outputs().len(), tract.outputs().len(), "{name}");
    for (a, b) in engine.outputs().iter().zip(tract.outputs()) {
        assert_eq!(a.dims, b.dims, "{name}: output {} dims", a.name);
    }
    let item_len = model.input.item_len();
    let mut worst_seen = 0.0f32;
    for &bucket in &model.buckets {
        let input = windows(bucket as u64, bucket, item_len);
        let want = tract.infer(bucket, &[&input]).unwrap();
        let got = engine.infer(bucket, &[&input]).unwrap();
        for (o, (g, w)) in got.iter().zip(&want).enumerate() {
            let (worst, ok) = compare(g, w);
            worst_seen = worst_seen.max(worst);
            assert!(
                ok,
                "{name} on {}: bucket {bucket} output {o}: max |diff| {worst:e} over tolerance",
                engine.kind()
            );
        }
        // The last row of the batch equals that window alone.
        let last = &input[(bucket - 1) * item_len..];
        let alone = engine.infer(1, &[last]).unwrap();
        for (o, (a, full)) in alone.iter().zip(&got).enumerate() {
            let row = &full[full.len() - a.len()..];
            let (worst, ok) = compare(a, row);
            assert!(
                ok,
                "{name} on {}: bucket {bucket} output {o}: last row differs from the window alone by {worst:e}",
                engine.kind()
            );
        }
    }
    eprintln!(
        "{name}: {} matches tract on buckets {:?}, max |diff| {worst_seen:e}",
        engine.kind(),
        model.buckets
    );
}

#[test]
fn every_engine_matches_tract_on_every_family_and_bucket() {
    let engines = engines_under_test();
    for (config, model) in CASES {
        let model = prepared(config, model);
        let mut tract =
            open_engine(&model, EngineChoice::Tract, &EngineSettings::default()).unwrap();
        assert_eq!(tract.kind(), EngineKind::Tract);
        // auto is onnxruntime once its library is loaded in this process
        // (or found by the search), else tract.
        let auto = open_engine(&model, EngineChoice::Auto, &EngineSettings::default()).unwrap();
        assert!(
            matches!(auto.kind(), EngineKind::Tract | EngineKind::Onnxruntime),
            "{}",
            auto.kind()
        );
        check_repeatable(&model, tract.as_mut());
        for (choice, settings) in &engines {
            let mut engine = open_engine(&model, *choice, settings)
                .unwrap_or_else(|e| panic!("{}: {e}", model.entry.name));
            assert_eq!(engine.kind().as_str(), choice.name());
            check(&model, tract.as_mut(), engine.as_mut());
            check_repeatable(&model, engine.as_mut());
        }
    }
}

/// Runs `gsinfer bench --engine onnxruntime` with `env` on a copy of the
/// example configuration with `extra` prepended; returns (exit status,
/// stdout, stderr).
fn bench_with(dir: &Path, extra: &str, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    bench_engine(dir, "onnxruntime", extra, env)
}

/// [`bench_with`] for any `--engine`.
fn bench_engine(
    dir: &Path,
    engine: &str,
    extra: &str,
    env: &[(&str, &str)],
) -> (Option<i32>, String, String) {
    let example = std::fs::read_to_string(root().join("config/gsinfer.example.toml")).unwrap();
    let text = format!("{extra}\n{example}").replace(
        "path = \"../model_repository\"",
        &format!(
            "path = {:?}",
            root().join("model_repository").display().to_string()
        ),
    );
    let config = dir.join("gsinfer.toml");
    std::fs::write(&config, text).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gsinfer"));
    cmd.args([
        "bench",
        "--model",
        "smap_lstm",
        "--engine",
        engine,
        "--seconds",
        "0",
        "--json",
        "--config",
    ])
    .arg(&config)
    .env_remove("ORT_DYLIB_PATH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_missing_library_fails_with_one_line_naming_the_key_and_the_fix() {
    if !cfg!(feature = "onnxruntime") {
        eprintln!("skipped: built without the onnxruntime feature");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The configuration names a file that is not there: check-config's error.
    let (code, _, err) = bench_with(
        dir.path(),
        "[engine]\nonnxruntime_library = \"/nonexistent/libonnxruntime.so\"\n",
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("engine.onnxruntime_library") && err.contains("pip install onnxruntime"),
        "{err}"
    );
    // ORT_DYLIB_PATH names a file that is not there: the engine's own error.
    let (code, _, err) = bench_with(
        dir.path(),
        "",
        &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")],
    );
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("ORT_DYLIB_PATH")
            && err.contains("set engine.onnxruntime_library or ORT_DYLIB_PATH"),
        "{err}"
    );
}

#[test]
fn bench_reports_the_engine_it_ran() {
    let Some(lib) = onnxruntime_library().filter(|_| cfg!(feature = "onnxruntime")) else {
        common::skip("no onnxruntime library (pip install onnxruntime)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = bench_with(dir.path(), "", &[("ORT_DYLIB_PATH", lib.to_str().unwrap())]);
    assert_eq!(code, Some(0), "{err}");
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["engine"], "onnxruntime", "{out}");
    assert_eq!(line["batch"], 1, "{out}");
    assert!(line["windows_per_s"].as_f64().unwrap() > 0.0, "{out}");
    assert!(line["ms_per_batch"].as_f64().unwrap() > 0.0, "{out}");
}

#[test]
fn auto_runs_onnxruntime_when_its_library_is_found_and_tract_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    // No library anywhere the search looks (CI has none installed): tract.
    let (code, out, err) = bench_engine(dir.path(), "auto", "", &[]);
    assert_eq!(code, Some(0), "{err}");
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    if line["engine"] == "onnxruntime" {
        eprintln!("this box has a system libonnxruntime: the tract half is skipped");
    } else {
        assert_eq!(line["engine"], "tract", "{out}");
    }
    let Some(lib) = onnxruntime_library().filter(|_| cfg!(feature = "onnxruntime")) else {
        common::skip("no onnxruntime library (pip install onnxruntime)");
        return;
    };
    let (code, out, err) = bench_engine(
        dir.path(),
        "auto",
        "",
        &[("ORT_DYLIB_PATH", lib.to_str().unwrap())],
    );
    assert_eq!(code, Some(0), "{err}");
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["engine"], "onnxruntime", "{out}");
}

/// `tools/quantize_models.py` writes an int8 copy of an LSTM that keeps its
/// name and tensors, onnxruntime runs it (with its weights pre-packed) close
/// to the fp32 forecasts, and tract refuses it at load rather than running
/// something else. Its fidelity guard keeps a model fp32 where int8 would
/// move the forecasts by more than a quarter of the model's own error on
/// the train split: A-1 (almost constant, forecast error ~0.009) stays fp32,
/// A-2 goes int8. "Close" on real telemetry (A-2's test split, scaled to
/// [-1, 1]): forecasts moved by at most 0.03 on average, a few int8 steps of
/// the input's range (2/255 each). Random windows would be no test: they
/// are far from anything the model was trained on.
#[test]
fn an_int8_copy_runs_on_onnxruntime_close_to_fp32_and_tract_refuses_it() {
    let Some(library) = onnxruntime_library() else {
        common::skip("int8 case (no onnxruntime: pip install onnxruntime)");
        return;
    };
    let Some(data) = common::data_dir() else {
        return;
    };
    let quantizer = Command::new("python3")
        .args(["-c", "import numpy, onnx, onnxruntime.quantization"])
        .output();
    if !quantizer.is_ok_and(|o| o.status.success()) {
        common::skip("int8 case (no onnx for onnxruntime's quantizer: pip install onnx)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("repo");
    let status = Command::new("python3")
        .arg(root().join("tools/quantize_models.py"))
        .args(["--repo", "model_repository", "--family", "lstm"])
        .args(["--only", "lstm_A-1,lstm_A-2", "--data-dir"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .current_dir(root())
        .status()
        .unwrap();
    assert!(status.success(), "quantize_models.py failed");
    let kept = std::fs::read_to_string(out.join("lstm_A-1/config.pbtxt")).unwrap();
    assert!(
        kept.contains(r#"string_value: "none (int8 shift"#),
        "{kept}"
    );
    assert_eq!(
        std::fs::read(out.join("lstm_A-1/1/model.onnx")).unwrap(),
        std::fs::read(root().join("model_repository/lstm_A-1/1/model.onnx")).unwrap(),
        "a model kept fp32 is copied unchanged"
    );
    let pbtxt = std::fs::read_to_string(out.join("lstm_A-2/config.pbtxt")).unwrap();
    assert!(pbtxt.contains(r#"name: "lstm_A-2""#), "{pbtxt}");
    assert!(
        pbtxt.contains(r#"string_value: "int8 dynamic, per tensor""#),
        "{pbtxt}"
    );

    let fp32 = prepared("config/smap_lstm.toml", "lstm_A-2");
    let config_text = std::fs::read_to_string(root().join("config/smap_lstm.toml"))
        .unwrap()
        .replace(
            r#"path = "../model_repository""#,
            &format!("path = {:?}", out.display().to_string()),
        );
    let config_path = dir.path().join("int8.toml");
    std::fs::write(&config_path, config_text).unwrap();
    let int8 = prepared(config_path.to_str().unwrap(), "lstm_A-2");
    assert_eq!(int8.input, fp32.input);

    let settings = EngineSettings {
        onnxruntime_library: Some(library),
        threads: 1,
        ..EngineSettings::default()
    };
    let mut a = open_engine(&fp32, EngineChoice::Onnxruntime, &settings).unwrap();
    let mut b = open_engine(&int8, EngineChoice::Onnxruntime, &settings).unwrap();
    assert_eq!(a.outputs()[0].dims, vec![10]);
    assert_eq!(b.outputs()[0].dims, vec![10]);

    // 64 windows of 250 samples, 100 apart, and the 10 values after each.
    let rows = gsinfer::eval::read_channel(&data, "test", "A-2").unwrap();
    let (length, horizon, n) = (250, 10, 64);
    let starts: Vec<usize> = (0..n).map(|k| k * 100).collect();
    assert!(starts[n - 1] + length + horizon <= rows.len());
    let input: Vec<f32> = starts
        .iter()
        .flat_map(|s| rows[*s..s + length].iter().flatten().copied())
        .collect();
    let truth: Vec<f32> = starts
        .iter()
        .flat_map(|s| rows[s + length..s + length + horizon].iter().map(|r| r[0]))
        .collect();
    let want = &a.infer(n, &[&input]).unwrap()[0];
    let got = &b.infer(n, &[&input]).unwrap()[0];
    let mean_abs = |x: &[f32], y: &[f32]| {
        x.iter().zip(y).map(|(p, q)| (p - q).abs()).sum::<f32>() / x.len() as f32
    };
    let moved = mean_abs(got, want);
    let error = mean_abs(want, &truth);
    eprintln!(
        "int8 moves lstm_A-2's forecasts by {moved} on average; its forecast error is {error}"
    );
    assert!(got.iter().all(|g| g.is_finite()));
    assert!(
        moved <= 0.03,
        "int8 forecasts differ from fp32 by {moved} on average (the model's own error: {error})"
    );
    // Unlike fp32, a window's int8 forecast depends on its batch: dynamic
    // quantization takes one activation scale per call, from the whole
    // batch's range. Alone, the first window moves by under one int8 step.
    let alone = &b.infer(1, &[&input[..length * rows[0].len()]]).unwrap()[0];
    let shift = mean_abs(alone, &got[..horizon]);
    assert!(shift <= 2.0 / 255.0, "{alone:?} vs {:?}", &got[..horizon]);
    let fp32_alone = &a.infer(1, &[&input[..length * rows[0].len()]]).unwrap()[0];
    assert!(mean_abs(fp32_alone, &want[..horizon]) <= 1e-5);

    let refused = open_engine(&int8, EngineChoice::Tract, &EngineSettings::default());
    assert!(refused.is_err(), "tract loaded an int8 graph");
}
