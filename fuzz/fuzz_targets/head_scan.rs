//! Bytes → the HTTP head scanner (`sluice_net::http::framing::HeadScan`),
//! which reads every byte a proxy client sends before hyper does.
//! Invariants: no panic; the verdicts do not depend on how the bytes were
//! split into reads (the first input byte picks the split points); at most
//! one verdict per `\n` in the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_net::http::framing::HeadScan;

fn verdicts<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> Vec<bool> {
    let mut scan = HeadScan::default();
    let mut out = Vec::new();
    for p in pieces {
        scan.feed(p, |h| out.push(h.both_lengths));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let whole = verdicts(std::iter::once(rest));
    let split = verdicts(rest.chunks(usize::from(step).max(1)));
    assert_eq!(whole, split, "split every {step} bytes");
    let lines = rest.iter().filter(|&&b| b == b'\n').count();
    assert!(whole.len() <= lines, "{} verdicts, {lines} lines", whole.len());
});
