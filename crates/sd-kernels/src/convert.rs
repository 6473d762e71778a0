//! bf16 <-> f32 conversion of whole buffers, in parallel: the activations of a bf16 model
//! pass through it around every kernel. Narrowing rounds to nearest even exactly as
//! `half::bf16::from_f32` does (NaNs stay NaN), so results do not depend on the level.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Values per parallel chunk (below this a buffer converts on one thread).
const CHUNK: usize = 1 << 16;

/// `src` (bf16 bits) widened to f32.
pub fn widen_bf16(src: &[u16]) -> Vec<f32> {
    let mut out = Vec::with_capacity(src.len());
    out.spare_capacity_mut()[..src.len()]
        .par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(dst, src)| widen_chunk(src, dst));
    // SAFETY: every value up to `src.len()` was written above.
    unsafe { out.set_len(src.len()) };
    out
}

/// `src` narrowed to bf16 bits, rounding to nearest even.
pub fn narrow_to_bf16(src: &[f32]) -> Vec<u16> {
    let mut out = Vec::with_capacity(src.len());
    out.spare_capacity_mut()[..src.len()]
        .par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(dst, src)| narrow_chunk(src, dst));
    // SAFETY: every value up to `src.len()` was written above.
    unsafe { out.set_len(src.len()) };
    out
}

/// One bf16 value's f32: its bits are the f32's upper half.
#[inline]
fn widen(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// One f32 rounded to bf16 bits, nearest even; a NaN stays a (quiet) NaN.
#[inline]
fn narrow(x: f32) -> u16 {
    let bits = x.to_bits();
    if bits & 0x7FFF_FFFF > 0x7F80_0000 {
        return ((bits >> 16) | 0x0040) as u16;
    }
    ((bits + 0x7FFF + (bits >> 16 & 1)) >> 16) as u16
}

fn widen_chunk(src: &[u16], dst: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F.
        unsafe { x86::widen(src, dst) };
        return;
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(widen(s));
    }
}

fn narrow_chunk(src: &[f32], dst: &mut [MaybeUninit<u16>]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
    {
        // SAFETY: the CPU has AVX-512F/BW.
        unsafe { x86::narrow(src, dst) };
        return;
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(narrow(s));
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn widen(src: &[u16], dst: &mut [MaybeUninit<f32>]) {
        assert_eq!(src.len(), dst.len());
        let n = src.len();
        let mut i = 0;
        while i + 16 <= n {
            let bits = _mm256_loadu_si256(src.as_ptr().add(i).cast());
            let wide = _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits));
            _mm512_storeu_si512(dst.as_mut_ptr().add(i).cast(), wide);
            i += 16;
        }
        for j in i..n {
            dst[j].write(super::widen(src[j]));
        }
    }

    /// # Safety
    /// The CPU has AVX-512F/BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn narrow(src: &[f32], dst: &mut [MaybeUninit<u16>]) {
        assert_eq!(src.len(), dst.len());
        let n = src.len();
        let (abs_mask, inf) = (
            _mm512_set1_epi32(0x7FFF_FFFF),
            _mm512_set1_epi32(0x7F80_0000),
        );
        let (round, one, quiet) = (
            _mm512_set1_epi32(0x7FFF),
            _mm512_set1_epi32(1),
            _mm512_set1_epi32(0x0040),
        );
        let mut i = 0;
        while i + 16 <= n {
            let bits = _mm512_loadu_si512(src.as_ptr().add(i).cast());
            let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), one);
            let rounded =
                _mm512_srli_epi32::<16>(_mm512_add_epi32(bits, _mm512_add_epi32(round, lsb)));
            let nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(bits, abs_mask), inf);
            let quieted = _mm512_or_si512(_mm512_srli_epi32::<16>(bits), quiet);
            let value = _mm512_mask_blend_epi32(nan, rounded, quieted);
            _mm256_storeu_si256(dst.as_mut_ptr().add(i).cast(), _mm512_cvtepi32_epi16(value));
            i += 16;
        }
        for j in i..n {
            dst[j].write(super::narrow(src[j]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn narrowing_rounds_as_half_does_on_every_kind_of_value() {
        let mut values: Vec<f32> = vec![
            0.0,
            -0.0,
            1.0,
            -1.5,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            1e-40,
            -1e-41,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7F80_0001),
            f32::from_bits(0x3F80_8000), // a tie: rounds to even (down)
            f32::from_bits(0x3F81_8000), // a tie: rounds to even (up)
            f32::from_bits(0x3F80_8001),
            f32::from_bits(0x7F7F_FFFF),
        ];
        let mut state = 12345u32;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            values.push(f32::from_bits(state));
        }
        let got = narrow_to_bf16(&values);
        for (&x, &g) in values.iter().zip(&got) {
            let want = bf16::from_f32(x);
            if x.is_nan() {
                assert!(bf16::from_bits(g).is_nan(), "{x:?}");
            } else {
                assert_eq!(g, want.to_bits(), "{x:e} ({:#x})", x.to_bits());
            }
        }
        let back = widen_bf16(&got);
        for (&b, &g) in back.iter().zip(&got) {
            assert_eq!(b.to_bits(), bf16::from_bits(g).to_f32().to_bits());
        }
        // Odd lengths (the scalar tail) and empty buffers.
        assert_eq!(narrow_to_bf16(&values[..17]), got[..17]);
        assert!(narrow_to_bf16(&[]).is_empty() && widen_bf16(&[]).is_empty());
    }
}
