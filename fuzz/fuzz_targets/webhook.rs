//! `cargo +nightly fuzz run webhook`: any bytes as a signed webhook request, split into
//! timestamp, signature and body (layout in `../harness.rs`), through the verifier and parser.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = harness::webhook(data);
});
