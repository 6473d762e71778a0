//! The bodies of the fuzz targets, shared with the regression test
//! `crates/stable-diffusion/tests/fuzz_regressions.rs` (which includes `targets.rs` by path).

pub mod targets;
