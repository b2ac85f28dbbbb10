//! The kiss deframer on arbitrary bytes, fed in arbitrary chunks: it must
//! never panic, never deliver a frame over its maximum, and every frame it
//! delivers must survive an encode/decode round trip (shared/deframe.rs).
#![no_main]

#[path = "shared/deframe.rs"]
mod deframe;

use gsinfer::ingest::framing::Framing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| deframe::check(Framing::Kiss, data));
