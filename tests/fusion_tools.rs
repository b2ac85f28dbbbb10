//! The offline tools that EVALUATION.md's ensemble figures come from: the
//! fusion tools (`tools/fuse_events.py`, `tools/fuse_scores.py`; standard
//! library only) and the seed ensemble's model merger
//! (`tools/mean_ensemble.py`; onnx and onnxruntime, which `.ci/run`
//! installs). Their unit tests are in Python, under `tests/python/`.

use std::path::Path;
use std::process::Command;

/// Runs `tests/python/<script>` and fails with its output unless it passes.
fn python_tests(script: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = Command::new("python3")
        .arg(&script)
        .output()
        .expect("python3 runs (the tools need it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_fusion_tools_count_and_fuse_as_documented() {
    python_tests("test_fusion_tools.py");
}

#[test]
fn merged_seed_models_output_their_mean() {
    python_tests("test_mean_ensemble.py");
}
