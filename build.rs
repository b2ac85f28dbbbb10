//! Build script.
//!
//! Compiles, with protox (a protobuf compiler in Rust: no protoc on the
//! build machine):
//! - `proto/model_config.proto` (the subset of Triton's `ModelConfig` that
//!   gsinfer honours) into an encoded `FileDescriptorSet` in `OUT_DIR`.
//!   `src/repository` embeds it so that `config.pbtxt` is parsed against a
//!   real schema at run time;
//! - `proto/grpc_service.proto` (the KServe v2 gRPC API, which imports
//!   `model_config.proto`) into Rust messages and a tonic server
//!   (`OUT_DIR/inference.rs`, included by `src/kserve/grpc/proto.rs`), and
//!   its `FileDescriptorSet` (`OUT_DIR/grpc_service.fdset`), which the
//!   tritonclient test compares with tritonclient's own.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=proto/model_config.proto");
    println!("cargo:rerun-if-changed=proto/grpc_service.proto");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    compile_model_config(&out_dir);
    compile_grpc_service(&out_dir);
}

fn compiler(source_info: bool) -> protox::Compiler {
    let mut compiler = protox::Compiler::new(["proto"])
        .unwrap_or_else(|e| panic!("cannot use `proto` as an include directory: {e}"));
    compiler.include_source_info(source_info);
    compiler
}

fn write(target: PathBuf, bytes: Vec<u8>) {
    fs::write(&target, bytes)
        .unwrap_or_else(|e| panic!("cannot write `{}`: {e}", target.display()));
}

/// Writes `OUT_DIR/model_config.fdset`.
fn compile_model_config(out_dir: &std::path::Path) {
    let mut compiler = compiler(false);
    if let Err(e) = compiler.open_file("model_config.proto") {
        panic!("proto/model_config.proto does not compile: {e:?}");
    }
    write(
        out_dir.join("model_config.fdset"),
        compiler.encode_file_descriptor_set(),
    );
}

/// Writes `OUT_DIR/inference.rs` (messages of both files, the server of
/// `GRPCInferenceService`; no client) and `OUT_DIR/grpc_service.fdset`.
fn compile_grpc_service(out_dir: &std::path::Path) {
    let mut compiler = compiler(true);
    compiler.include_imports(true);
    if let Err(e) = compiler.open_file("grpc_service.proto") {
        panic!("proto/grpc_service.proto does not compile: {e:?}");
    }
    write(
        out_dir.join("grpc_service.fdset"),
        compiler.encode_file_descriptor_set(),
    );
    tonic_prost_build::configure()
        .build_client(false)
        .build_transport(false)
        .compile_fds(compiler.file_descriptor_set())
        .unwrap_or_else(|e| {
            panic!("cannot generate the gRPC code of proto/grpc_service.proto: {e}")
        });
}
