//! The serial line splitter: any bytes, in any chunking, never panic, never
//! yield a line over max_line, never buffer more than max_line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::source::lines::{Line, LineSplitter};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let max_line = usize::from(first % 64) + 1;
    let mut s = LineSplitter::new(max_line);
    // The first bytes pick the chunk sizes, the rest is the stream.
    for chunk in rest.chunks(usize::from(first % 7) + 1) {
        s.push(chunk, |line| {
            if let Line::Complete(l) = line {
                assert!(l.len() <= max_line);
            }
        });
        assert!(s.pending_len() <= max_line);
    }
});
