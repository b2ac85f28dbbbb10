//! The offline fusion tools that EVALUATION.md's ensemble figures come
//! from (`tools/fuse_events.py`, `tools/fuse_scores.py`): their unit tests,
//! in Python (`tests/python/test_fusion_tools.py`, standard library only).

use std::path::Path;
use std::process::Command;

#[test]
fn the_fusion_tools_count_and_fuse_as_documented() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/test_fusion_tools.py");
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
