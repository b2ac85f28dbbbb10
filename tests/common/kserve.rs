//! What the tritonclient tests share: the Python modules they need, the
//! example model's seeded input with tract's output on it (the reference
//! the clients compare with), and a service started with a bearer token.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use gsinfer::engine::tract::TractEngine;
use gsinfer::engine::{Engine, TensorSpec};
use rand::{Rng, SeedableRng};

use super::gsinfer::{free_port, write_config};

/// A bucket of the example model, so the server runs the batch unpadded, as the reference does.
pub const BATCH: usize = 4;

/// Whether `python3` imports `modules` (comma-separated); if not, the test
/// is skipped with `pip_install` as the fix, and fails under `CI`.
pub fn python_has(modules: &str, pip_install: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let message =
            format!("python3 cannot import {modules}; python3 -m pip install {pip_install}");
        assert!(std::env::var_os("CI").is_none(), "{message}");
        super::skip(&message);
    }
    ok
}

fn f32_file(path: &Path, values: &[f32]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

/// Writes `dir/input.f32` ([`BATCH`] windows of the example model, seeded
/// uniform in [-1, 1)) and `dir/expected.f32` (tract's forecast for them),
/// little-endian f32, for the Python clients to send and compare.
pub fn reference_batch(dir: &Path, seed: u64) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let spec = TensorSpec {
        name: "window".into(),
        dims: vec![250, 25],
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let input: Vec<f32> = (0..BATCH * spec.item_len())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let mut engine = TractEngine::load(
        &root.join("model_repository/smap_lstm/1/model.onnx"),
        &spec,
        &["forecast".into()],
    )
    .unwrap();
    // tract's first run of a batch size on a fresh engine differs from its
    // later runs by up to ~1.3e-4 on this model (later runs agree to ~1e-6),
    // so both sides are warmed up once: here, and in the Python checks.
    engine.infer(BATCH, &[&input]).unwrap();
    let expected = engine.infer(BATCH, &[&input]).unwrap().remove(0);
    f32_file(&dir.join("input.f32"), &input);
    f32_file(&dir.join("expected.f32"), &expected);
}

/// The example configuration in `dir` with KServe behind the bearer token
/// `token` (kept in `dir/token`, mode 0600) and no broker listening on its
/// MQTT port (KServe inference needs none); returns it and its status port.
pub fn token_config(dir: &Path, token: &str) -> (PathBuf, u16) {
    let file = dir.join("token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let status_port = free_port();
    let config = write_config(
        dir,
        free_port(),
        status_port,
        &format!("token_file = {:?}", file.display().to_string()),
    );
    (config, status_port)
}
