//! The AVX2 + FMA micro-kernel: a 6 x 16 tile in twelve 256-bit accumulators.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::{MR, NR};

const _: () = assert!(MR == 6 && NR == 16);

/// `c[6 x 16] (+)= a · b` over `kc` steps.
///
/// # Safety
/// The CPU has AVX2 and FMA; `a` holds `6·kc` values, `b` `kc·16`, and `c` a 6 x 16 tile at
/// row stride `ldc`.
pub(super) unsafe fn kernel(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    kernel_6x16(kc, a, b, c, ldc, accumulate)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_6x16(
    kc: usize,
    mut a: *const f32,
    mut b: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    if accumulate {
        for (i, row) in acc.iter_mut().enumerate() {
            row[0] = _mm256_loadu_ps(c.add(i * ldc));
            row[1] = _mm256_loadu_ps(c.add(i * ldc + 8));
        }
    }
    for _ in 0..kc {
        let b0 = _mm256_loadu_ps(b);
        let b1 = _mm256_loadu_ps(b.add(8));
        for (i, row) in acc.iter_mut().enumerate() {
            let a_i = _mm256_broadcast_ss(&*a.add(i));
            row[0] = _mm256_fmadd_ps(a_i, b0, row[0]);
            row[1] = _mm256_fmadd_ps(a_i, b1, row[1]);
        }
        a = a.add(MR);
        b = b.add(NR);
    }
    for (i, row) in acc.iter().enumerate() {
        _mm256_storeu_ps(c.add(i * ldc), row[0]);
        _mm256_storeu_ps(c.add(i * ldc + 8), row[1]);
    }
}
