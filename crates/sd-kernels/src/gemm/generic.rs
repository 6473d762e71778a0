//! The portable micro-kernel: plain loops the compiler vectorizes for any target.

use super::{MR, NR};

/// `c[MR x NR] (+)= a · b` over `kc` steps (see the driver for the panel layouts).
///
/// # Safety
/// `a` holds `MR·kc` values, `b` `kc·NR`, and `c` an `MR x NR` tile at row stride `ldc`.
pub(super) unsafe fn kernel(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let a = std::slice::from_raw_parts(a, MR * kc);
    let b = std::slice::from_raw_parts(b, NR * kc);
    let mut acc = [[0f32; NR]; MR];
    if accumulate {
        for (i, row) in acc.iter_mut().enumerate() {
            row.copy_from_slice(std::slice::from_raw_parts(c.add(i * ldc), NR));
        }
    }
    for (a_k, b_k) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for (row, &a_ik) in acc.iter_mut().zip(a_k) {
            for (c_ij, &b_kj) in row.iter_mut().zip(b_k) {
                *c_ij += a_ik * b_kj;
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        std::slice::from_raw_parts_mut(c.add(i * ldc), NR).copy_from_slice(row);
    }
}
