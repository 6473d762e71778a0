//! Fuzz target `tiny_vae`: see fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = sd_fuzz::targets::tiny_vae(data);
});
