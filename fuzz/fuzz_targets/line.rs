//! The line deframer on arbitrary bytes, fed in arbitrary chunks: it must
//! never panic, never deliver a frame over its maximum, and every frame it
//! delivers must survive an encode/decode round trip.
#![no_main]

use gsinfer::ingest::framing::{encode, Deframer, Framing};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).max(1);
    let mut d = Deframer::new(Framing::Line, MAX, None);
    let mut frames = Vec::new();
    for chunk in input.chunks(cut) {
        d.push(chunk, &mut |f| {
            assert!(
                f.len() <= MAX,
                "frame of {} bytes over the maximum",
                f.len()
            );
            frames.push(f.to_vec());
        });
    }
    let stats = d.take_stats();
    assert_eq!(stats.frames as usize, frames.len());
    let mut wire = Vec::new();
    for f in &frames {
        encode(Framing::Line, f, &mut wire);
    }
    let mut again = Vec::new();
    Deframer::new(Framing::Line, MAX, None).push(&wire, &mut |f| again.push(f.to_vec()));
    assert_eq!(again, frames);
});
