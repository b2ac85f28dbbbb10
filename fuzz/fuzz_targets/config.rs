//! The service configuration loader (`Config::load`: TOML through the
//! `config` crate, serde with `deny_unknown_fields`, path resolution and
//! `Config::validate`) on arbitrary file contents. It must never panic,
//! only return errors. Checks: errors name the file and have a message; an
//! accepted configuration validates clean; and its effective form
//! (`Config::to_toml`, what `gsinfer check-config` prints) loads back to
//! the same configuration. The file is written to a folder of its own
//! under the temporary directory (TMPDIR; /dev/shm is fastest).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use gsinfer::config::Config;
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("gsinfer-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let path = dir().join("gsinfer.toml");
    std::fs::write(&path, data).expect("write the config");
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            assert!(!errors.0.is_empty());
            for e in &errors.0 {
                assert_eq!(e.file, path);
                assert!(!e.message.is_empty(), "{e:?}");
            }
            return;
        }
    };
    assert_eq!(config.validate(), Vec::<(String, String)>::new());
    let printed = config.to_toml();
    let again_path = dir().join("effective.toml");
    std::fs::write(&again_path, &printed).expect("write the effective config");
    let again = Config::load(&again_path)
        .unwrap_or_else(|e| panic!("the effective configuration does not load: {e}\n{printed}"));
    assert_eq!(again, config, "\n{printed}");
});
