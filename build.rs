//! Build script.
//!
//! Compiles `proto/model_config.proto` (the subset of Triton's `ModelConfig`
//! that gsinfer honours) into an encoded `FileDescriptorSet` in `OUT_DIR`.
//! `src/repository` embeds it so that `config.pbtxt` is parsed against a
//! real schema at run time, with no protoc on the build machine.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=proto/model_config.proto");
    compile_model_config();
}

/// Writes `OUT_DIR/model_config.fdset`.
fn compile_model_config() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut compiler = protox::Compiler::new(["proto"])
        .unwrap_or_else(|e| panic!("cannot use `proto` as an include directory: {e}"));
    compiler.include_source_info(false);
    if let Err(e) = compiler.open_file("model_config.proto") {
        panic!("proto/model_config.proto does not compile: {e:?}");
    }
    let target = out_dir.join("model_config.fdset");
    fs::write(&target, compiler.encode_file_descriptor_set())
        .unwrap_or_else(|e| panic!("cannot write `{}`: {e}", target.display()));
}
