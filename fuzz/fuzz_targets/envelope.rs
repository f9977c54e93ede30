//! `cargo +nightly fuzz run envelope`: any bytes as an envelope body (see `../harness.rs`).
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = harness::envelope(data);
});
