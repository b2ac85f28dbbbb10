//! The layering rule of docs/architecture.md, checked on the source: the
//! stages (ingest, window, pipeline and scoring, batch, engine and the
//! engine threads, publish) never name the status room or the service's
//! wiring. They report through `gsinfer::events` (typed events, one sink)
//! and `gsinfer::report` (a source's own counters); `status/` consumes.

use std::path::{Path, PathBuf};

/// The stages' source files and folders, relative to `src/`.
const STAGES: &[&str] = &[
    "ingest",
    "window.rs",
    "pipeline.rs",
    "score",
    "batch",
    "engine",
    "infer.rs",
    "infer",
    "publish.rs",
    "events.rs",
    "report.rs",
];

/// Paths that would reach into the status room or the wiring.
const FORBIDDEN: &[&str] = &[
    "crate::status",
    "crate::service",
    "gsinfer::status",
    "gsinfer::service",
];

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            rust_files(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

#[test]
fn no_stage_names_the_status_room_or_the_wiring() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for stage in STAGES {
        let path = src.join(stage);
        if path.exists() {
            rust_files(&path, &mut files);
        }
    }
    assert!(
        files.len() > 20,
        "the stages' files were not found: {files:?}"
    );
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if FORBIDDEN.iter().any(|f| line.contains(f)) {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "stages must report through gsinfer::events or gsinfer::report, not name status/ or service/:\n{}",
        found.join("\n")
    );
}
