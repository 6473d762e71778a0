//! Fuzz target `tokenizer`: see fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(init: sd_fuzz::targets::warm_up(), |data: &[u8]| {
    let _ = sd_fuzz::targets::tokenizer(data);
});
