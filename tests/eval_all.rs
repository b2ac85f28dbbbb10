//! `gsinfer eval --all` over a data set that mixes spacecraft: the channels a
//! configuration serves are evaluated, the others are skipped with the
//! reason, and the report groups the detection figures per spacecraft.

mod common;

use std::path::Path;
use std::process::Command;

use common::gsinfer::{bin, eval_json};
use serde_json::Value;

/// A data set of one SMAP channel (A-1, 25 features) and one MSL channel
/// (C-1, 55 features), with the real labels, in `dir`.
fn mixed_data_set(data: &Path, dir: &Path) {
    for split in ["train", "test"] {
        std::fs::create_dir_all(dir.join(split)).unwrap();
        for chan in ["A-1", "C-1"] {
            std::fs::copy(
                data.join(split).join(format!("{chan}.npy")),
                dir.join(split).join(format!("{chan}.npy")),
            )
            .unwrap();
        }
    }
    std::fs::copy(
        data.join("labeled_anomalies.csv"),
        dir.join("labeled_anomalies.csv"),
    )
    .unwrap();
}

fn config(dir: &Path, channels: &str) -> std::path::PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("model_repository");
    let text = format!(
        "[repository]\npath = {:?}\n\n[[pipeline]]\nmodel = \"vae_A-1\"\ntopics = [\"telemetry/SMAP/+\"]\n{channels}\
         features = 25\nwindow = {{ length = 50, stride = 1 }}\n\
         scoring = {{ kind = \"reconstruction\", reconstruction_features = [0], threshold = {{ method = \"ndt\" }} }}\n",
        repo.display().to_string()
    );
    let path = dir.join(format!("gsinfer-{}.toml", channels.len()));
    std::fs::write(&path, text).unwrap();
    path
}

fn eval_all(config: &Path, data: &Path) -> Vec<Value> {
    eval_json(&["--all", "--metrics", "--jobs", "1"], config, data)
}

#[test]
fn eval_all_skips_unserved_channels_and_says_why() {
    let Some(data) = common::data_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let set = tmp.path().join("data");
    mixed_data_set(&data, &set);

    // A pipeline listing its channel: C-1 has no pipeline.
    let lines = eval_all(&config(tmp.path(), "channels = [\"A-1\"]\n"), &set);
    let of = |lines: &[Value], kind: &str| -> Vec<Value> {
        lines
            .iter()
            .filter(|l| l["type"] == kind)
            .cloned()
            .collect()
    };
    let skipped = of(&lines, "skipped");
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0]["channel"], "C-1");
    assert!(skipped[0]["reason"]
        .as_str()
        .unwrap()
        .contains("no [[pipeline]] serves it"));
    let metrics = of(&lines, "metrics");
    assert_eq!(metrics.len(), 1);
    assert_eq!(metrics[0]["channel"], "A-1");
    // Scored from early on: the warm-up decides from the first NDT batch.
    let total = of(&lines, "total");
    assert_eq!(total[0]["channels"], 1);
    assert_eq!(total[0]["skipped"], 1);
    let group = of(&lines, "group");
    assert_eq!(group.len(), 1, "one spacecraft evaluated: {group:?}");
    assert_eq!(group[0]["group"], "all");
    assert!(group[0]["total"]["f05"].is_number());
    assert!(group[0]["telemetry_days"].as_f64().unwrap() > 5.0);

    // A catch-all pipeline of 25 features: C-1's 55 do not fit it.
    let lines = eval_all(&config(tmp.path(), ""), &set);
    let skipped = of(&lines, "skipped");
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(
        skipped[0]["reason"]
            .as_str()
            .unwrap()
            .contains("55 features, pipeline vae_A-1 takes 25"),
        "{skipped:?}"
    );
}

#[test]
fn a_named_channel_that_no_pipeline_serves_is_an_error() {
    let Some(data) = common::data_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["eval", "--channel", "C-1", "--config"])
        .arg(config(tmp.path(), "channels = [\"A-1\"]\n"))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("channel C-1: no [[pipeline]] serves it"),
        "{err}"
    );
}

/// A forecaster served at a stride of 5 runs one window in five and still
/// scores every sample: each window's first five forecast steps are
/// scored (EVALUATION.md, 11.). Step 1 of each window is the forecast the
/// same window gives at stride 1, so those samples' errors are identical.
#[test]
fn a_strided_forecaster_scores_every_sample_from_its_forecast_steps() {
    let Some(data) = common::data_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("model_repository");
    let errors = |stride: u64| -> Vec<(u64, f64)> {
        let path = tmp.path().join(format!("stride-{stride}.toml"));
        std::fs::write(
            &path,
            format!(
                "[repository]\npath = {:?}\n\n[[pipeline]]\nmodel = \"tfm_T-8\"\ntopics = [\"telemetry/MSL/T-8\"]\n\
                 channels = [\"T-8\"]\nfeatures = 55\nwindow = {{ length = 64, stride = {stride} }}\n\
                 scoring = {{ kind = \"forecast\", threshold = {{ method = \"ndt\" }} }}\n",
                repo.display().to_string()
            ),
        )
        .unwrap();
        eval_json(&["--channel", "T-8", "--jobs", "1"], &path, &data)
            .iter()
            .filter(|l| l["type"] == "score")
            .map(|l| (l["index"].as_u64().unwrap(), l["error"].as_f64().unwrap()))
            .collect()
    };
    let (every, fifth) = (errors(1), errors(5));
    let indices = |v: &[(u64, f64)]| v.iter().map(|(i, _)| *i).collect::<Vec<_>>();
    assert_eq!(
        indices(&every)[0],
        64,
        "the first forecast targets sample 64"
    );
    assert_eq!(indices(&every), indices(&fifth), "the same samples scored");
    // Windows end at samples 63, 68, 73, …: their step 1 targets 64, 69, 74, …
    for ((i, e1), (_, e5)) in every.iter().zip(&fifth) {
        if (i - 64) % 5 == 0 {
            assert_eq!(e1, e5, "sample {i}: step 1 of the same window");
        }
    }
    assert_ne!(every, fifth, "later steps forecast from earlier windows");
}
