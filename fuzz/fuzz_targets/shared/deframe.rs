//! The body the deframer targets share (cobs, kiss, line, slip): one
//! framing's deframer on arbitrary bytes, fed in arbitrary chunks (the
//! first byte sets the chunk size). It must never panic, never deliver a
//! frame over its maximum, count every frame it delivers, and every frame
//! must survive an encode/decode round trip.

use gsinfer::ingest::framing::{encode, Deframer, Framing};

const MAX: usize = 64;

/// Checks `framing`'s deframer on `data` (see the module docs).
pub fn check(framing: Framing, data: &[u8]) {
    let Some((&cut, input)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).max(1);
    let mut d = Deframer::new(framing, MAX, None);
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
        encode(framing, f, &mut wire);
    }
    let mut again = Vec::new();
    Deframer::new(framing, MAX, None).push(&wire, &mut |f| again.push(f.to_vec()));
    assert_eq!(again, frames);
}
