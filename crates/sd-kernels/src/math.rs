//! Vectorized elementwise math on slices, in place: `exp` and the activations (SiLU, GELU with
//! erf, GELU with tanh, quick GELU), each dispatched on the kernel level.
//!
//! Accuracy (tested against f64 references over the whole f32 range, every level):
//! - [`exp`]: within 2 ulp (generic: the platform's `f32::exp`); `-inf` → 0, arguments past
//!   `ln(f32::MAX)` → `inf`, results below `f32::MIN_POSITIVE` are correctly scaled
//!   subnormals, NaN stays NaN.
//! - the activations: within a few ulp in relative terms on both sides of zero (the negative
//!   tail is computed from `exp(-|x|)` and `erfc`, never as `1 - something`), at `-inf` their
//!   limit `-0`, at `+inf` `+inf`, NaN stays NaN.
//!
//! Slices of at least [`PAR_MIN`] elements are split over the rayon pool (elementwise, so the
//! result is the same for any thread count); shorter ones run on the calling thread.
//!
//! `math::avx2` (crate-internal) has the same functions on one `__m256` register for fusing
//! into other AVX2 loops (`crate::math::avx2::exp` for a softmax, `silu` after a norm).

use rayon::prelude::*;

use crate::cpu::{self, Level};

/// Slices at least this long are split over the thread pool.
pub const PAR_MIN: usize = 1 << 17;
/// Elements per task when a slice is split.
const PAR_CHUNK: usize = 1 << 14;

/// `2·√(2/π)`: GELU-tanh's `tanh(√(2/π)·(x + 0.044715·x³))` is `2·sigmoid(2·…) - 1`.
const TANH_K1: f32 = 1.595_769_2;
/// `2·√(2/π)·0.044715`.
const TANH_K3: f32 = 0.071_354_814;
/// quick GELU's sigmoid slope.
const QUICK_GELU_K: f32 = 1.702;
/// Beyond this |x| GELU-erf is `x` (positive side) or `-0` (negative side) in f32.
const GELU_ERF_CLAMP: f32 = 15.0;
/// Below this `x²`, GELU-erf's positive side uses `erf` (small absolute error) ...
const SMALL_SQUARE_POSITIVE: f32 = 2.0;
/// ... and its negative side below this (where `1 - erf` still keeps its relative accuracy);
/// above, both use `erfc`.
const SMALL_SQUARE_NEGATIVE: f32 = 0.5;

/// `Q(t) = erf(√(t/2)) / (2√t)`, so `0.5·erf(x/√2) = |x|·Q(x²)`, on `t ∈ [0, 2]`, highest
/// power first: the Chebyshev interpolant of degree 6, rounded to f32 and then each
/// coefficient nudged by a few ulp where that lowered the maximum relative error (3.1e-8).
const HALF_ERF: [f32; 7] = [
    4.350_845_6e-7,
    -8.857_472_5e-6,
    0.000_114_663_62,
    -0.001_186_800_8,
    0.009_973_381,
    -0.066_490_36,
    0.398_942_3,
];
/// `0.5·erfcx(x/√2) = 0.5·exp(x²/2)·erfc(x/√2) ≈ N(x) / D(x)` on `x ∈ [0.7, 14.2]`, highest
/// power first: a least-squares rational fit of the relative error (linearized and
/// reweighted by the denominator, Loeb's method; 4.7e-8 before f32 evaluation). Both have
/// positive coefficients, so neither cancels nor has a root for `x ≥ 0`.
const HALF_ERFCX_NUM: [f32; 5] = [
    0.005_532_062_6,
    0.048_740_055,
    0.205_615_92,
    0.465_908_65,
    0.500_005_3,
];
/// The denominator of [`HALF_ERFCX_NUM`].
const HALF_ERFCX_DEN: [f32; 6] = [
    0.013_866_777_5,
    0.122_176_02,
    0.529_195_4,
    1.291_163_1,
    1.729_775_2,
    1.0,
];

/// An activation function, applied elementwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `x · sigmoid(x)` (also called swish).
    Silu,
    /// `0.5·x·(1 + erf(x/√2))`: torch's exact GELU.
    GeluErf,
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`: torch's `approximate="tanh"`.
    GeluTanh,
    /// `x · sigmoid(1.702·x)` (CLIP's quick GELU).
    QuickGelu,
}

impl Activation {
    /// Every activation.
    pub const ALL: &'static [Activation] = &[
        Activation::Silu,
        Activation::GeluErf,
        Activation::GeluTanh,
        Activation::QuickGelu,
    ];

    /// The activation of one value, as the generic level computes it.
    pub fn scalar(self, x: f32) -> f32 {
        match self {
            Activation::Silu => scalar::silu(x),
            Activation::GeluErf => scalar::gelu_erf(x),
            Activation::GeluTanh => scalar::gelu_tanh(x),
            Activation::QuickGelu => scalar::quick_gelu(x),
        }
    }

    /// Applies the activation to `xs` in place at the current thread's kernel level.
    pub fn apply(self, xs: &mut [f32]) {
        self.apply_at(cpu::level(), xs)
    }

    /// [`Activation::apply`] at a given level.
    pub fn apply_at(self, level: Level, xs: &mut [f32]) {
        split(xs, |c| self.apply_serial(level, c))
    }

    /// Applies the activation on the calling thread.
    pub(crate) fn apply_serial(self, level: Level, xs: &mut [f32]) {
        match level {
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 | Level::Avx512 | Level::Amx => {
                // SAFETY: a thread only runs at a level its CPU has (`with_level` and the
                // process level check `is_available`), and both levels need AVX2 and FMA.
                unsafe {
                    match self {
                        Activation::Silu => avx2::silu_slice(xs),
                        Activation::GeluErf => avx2::gelu_erf_slice(xs),
                        Activation::GeluTanh => avx2::gelu_tanh_slice(xs),
                        Activation::QuickGelu => avx2::quick_gelu_slice(xs),
                    }
                }
            }
            _ => xs.iter_mut().for_each(|x| *x = self.scalar(*x)),
        }
    }
}

/// Runs `f` on `xs` whole, or on chunks of it over the pool when it is long.
fn split(xs: &mut [f32], f: impl Fn(&mut [f32]) + Sync + Send) {
    if xs.len() >= PAR_MIN {
        xs.par_chunks_mut(PAR_CHUNK).for_each(f);
    } else {
        f(xs);
    }
}

/// `x ← eˣ` for every element, at the current thread's kernel level.
pub fn exp(xs: &mut [f32]) {
    exp_at(cpu::level(), xs)
}

/// [`exp`] at a given level.
pub fn exp_at(level: Level, xs: &mut [f32]) {
    split(xs, |c| exp_serial(level, c))
}

/// [`exp`] on the calling thread (for callers already inside a parallel loop).
pub fn exp_serial(level: Level, xs: &mut [f32]) {
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 | Level::Avx512 | Level::Amx => {
            // SAFETY: a thread only runs at a level its CPU has; both levels need AVX2 and FMA.
            unsafe { avx2::exp_slice(xs) }
        }
        _ => xs.iter_mut().for_each(|x| *x = x.exp()),
    }
}

/// `x ← x · sigmoid(x)` in place.
pub fn silu(xs: &mut [f32]) {
    Activation::Silu.apply(xs)
}

/// `x ← 0.5·x·(1 + erf(x/√2))` in place.
pub fn gelu_erf(xs: &mut [f32]) {
    Activation::GeluErf.apply(xs)
}

/// `x ← 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` in place (torch's tanh approximation).
pub fn gelu_tanh(xs: &mut [f32]) {
    Activation::GeluTanh.apply(xs)
}

/// `x ← x · sigmoid(1.702·x)` in place.
pub fn quick_gelu(xs: &mut [f32]) {
    Activation::QuickGelu.apply(xs)
}

/// The generic level, one value at a time (also the tails of fused generic loops).
pub(crate) mod scalar {
    use super::*;

    /// `1 / (1 + e⁻ᶻ)`, from `e^-|z|` on both sides so the negative tail keeps its accuracy.
    pub(crate) fn sigmoid(z: f32) -> f32 {
        let e = (-z.abs()).exp();
        let numerator = if z.is_sign_negative() { e } else { 1.0 };
        numerator / (1.0 + e)
    }

    /// `x · sigmoid(x)`.
    pub(crate) fn silu(x: f32) -> f32 {
        // `max` keeps `-inf · 0` from making a NaN (the limit is -0); a NaN `x` makes the
        // sigmoid NaN.
        x.max(-f32::MAX) * sigmoid(x)
    }

    /// `x · sigmoid(1.702·x)`.
    pub(crate) fn quick_gelu(x: f32) -> f32 {
        x.max(-f32::MAX) * sigmoid(QUICK_GELU_K * x)
    }

    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` as `x · sigmoid(2·√(2/π)·(…))`.
    pub(crate) fn gelu_tanh(x: f32) -> f32 {
        x.max(-f32::MAX) * sigmoid(x * (TANH_K1 + TANH_K3 * (x * x)))
    }

    /// A polynomial by Horner's rule in f64, highest power first.
    fn horner64<const N: usize>(coefficients: &[f32; N], x: f64) -> f64 {
        coefficients[1..]
            .iter()
            .fold(coefficients[0] as f64, |p, &c| p * x + c as f64)
    }

    /// `0.5·x·(1 + erf(x/√2))`, the AVX2 level's approximations evaluated in f64 (without
    /// FMA, f32 rounding would double their evaluation error).
    pub(crate) fn gelu_erf(x: f32) -> f32 {
        if x.is_nan() {
            return x;
        }
        let x = x as f64;
        let ax = x.abs().min(GELU_ERF_CLAMP as f64);
        let q = ax * ax;
        let factor = if x >= 0.0 {
            if q < SMALL_SQUARE_POSITIVE as f64 {
                0.5 + ax * horner64(&HALF_ERF, q)
            } else {
                1.0 - (-0.5 * q).exp() * half_erfcx(ax)
            }
        } else if q < SMALL_SQUARE_NEGATIVE as f64 {
            0.5 - ax * horner64(&HALF_ERF, q)
        } else {
            (-0.5 * q).exp() * half_erfcx(ax)
        };
        (x.max(-GELU_ERF_CLAMP as f64) * factor) as f32
    }

    /// `0.5·erfcx(x/√2)` in f64 from the rational fit.
    fn half_erfcx(ax: f64) -> f64 {
        horner64(&HALF_ERFCX_NUM, ax) / horner64(&HALF_ERFCX_DEN, ax)
    }
}

/// The AVX2 + FMA level: the functions on one `__m256` register, and slice loops over them.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::*;

    /// Above this, `eˣ` overflows (ln(f32::MAX) ≈ 88.7228); clamping here keeps `2ⁿ` finite.
    pub(super) const EXP_HI: f32 = 89.0;
    /// Below this, `eˣ` rounds to 0 (ln(2⁻¹⁵⁰) ≈ -103.972).
    pub(super) const EXP_LO: f32 = -104.0;
    /// `log₂ e`.
    pub(super) const LOG2E: f32 = std::f32::consts::LOG2_E;
    /// `ln 2` rounded to f32 ...
    pub(super) const LN2_HI: f32 = std::f32::consts::LN_2;
    /// ... and the rest of it (`ln 2 - LN2_HI`).
    pub(super) const LN2_LO: f32 = -1.904_654_2e-9;
    /// `(eʳ - 1) / r` on `r ∈ [-ln2/2, ln2/2]`, highest power first: the Chebyshev
    /// interpolant of degree 5 rounded to f32, so `eʳ ≈ 1 + r·P(r)` within 1.1e-8 relative.
    pub(super) const EXPM1_OVER_R: [f32; 6] = [
        0.001_393_364_2,
        0.008_369_149,
        0.041_666_467,
        0.166_665_05,
        0.5,
        1.0,
    ];

    /// A polynomial by Horner's rule with FMAs, highest power first.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn horner<const N: usize>(coefficients: &[f32; N], x: __m256) -> __m256 {
        let mut p = _mm256_set1_ps(coefficients[0]);
        for &c in &coefficients[1..] {
            p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(c));
        }
        p
    }

    /// `eˣ` lane by lane: `x = n·ln2 + r` with `|r| ≤ ln2/2`, `eʳ` by a degree-6
    /// polynomial, and `2ⁿ` applied as two factors so subnormal results are rounded once.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn exp(x: __m256) -> __m256 {
        // maxps/minps return their second operand when either is NaN: NaN passes through
        // (and then poisons the polynomial, whatever the integer part below does with it).
        let x = _mm256_min_ps(
            _mm256_set1_ps(EXP_HI),
            _mm256_max_ps(_mm256_set1_ps(EXP_LO), x),
        );
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
        );
        // x - n·LN2_HI is exact (both are multiples of 2⁻²⁴·2ᵏ and the difference is small).
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let p = _mm256_fmadd_ps(horner(&EXPM1_OVER_R, r), r, _mm256_set1_ps(1.0));
        // n ∈ [-150, 128]: n = n1 + n2 with both in [-75, 64], each 2^nᵢ a normal float.
        let n = _mm256_cvtps_epi32(n);
        let n1 = _mm256_srai_epi32::<1>(n);
        let n2 = _mm256_sub_epi32(n, n1);
        let bias = _mm256_set1_epi32(127);
        let s1 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n1, bias)));
        let s2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n2, bias)));
        _mm256_mul_ps(_mm256_mul_ps(p, s1), s2)
    }

    /// `1 / (1 + e⁻ᶻ)` lane by lane, from `e^-|z|` so the negative tail keeps its accuracy.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn sigmoid(z: __m256) -> __m256 {
        let e = exp(_mm256_or_ps(z, _mm256_set1_ps(-0.0)));
        let one = _mm256_set1_ps(1.0);
        // Lanes with the sign bit set (z ≤ -0) take e/(1+e), the others 1/(1+e).
        _mm256_div_ps(_mm256_blendv_ps(one, e, z), _mm256_add_ps(one, e))
    }

    /// `x` with `-inf` raised to `-f32::MAX`, so that `x · 0` is `-0` (NaN stays NaN).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn finite_below(x: __m256) -> __m256 {
        _mm256_max_ps(_mm256_set1_ps(-f32::MAX), x)
    }

    /// `x · sigmoid(x)` lane by lane.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn silu(x: __m256) -> __m256 {
        _mm256_mul_ps(finite_below(x), sigmoid(x))
    }

    /// `x · sigmoid(1.702·x)` lane by lane.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn quick_gelu(x: __m256) -> __m256 {
        let z = _mm256_mul_ps(x, _mm256_set1_ps(QUICK_GELU_K));
        _mm256_mul_ps(finite_below(x), sigmoid(z))
    }

    /// GELU with tanh lane by lane, as `x · sigmoid(2·√(2/π)·(x + 0.044715·x³))`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn gelu_tanh(x: __m256) -> __m256 {
        let x2 = _mm256_mul_ps(x, x);
        let k = _mm256_fmadd_ps(_mm256_set1_ps(TANH_K3), x2, _mm256_set1_ps(TANH_K1));
        _mm256_mul_ps(finite_below(x), sigmoid(_mm256_mul_ps(x, k)))
    }

    /// GELU with erf lane by lane: `0.5 ± |x|·Q(x²)` (`Q` a polynomial for erf) for small
    /// `x²`, `erfc(|x|/√2) = exp(-x²/2)·erfcx(|x|/√2)` (a rational function) above.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn gelu_erf(x: __m256) -> __m256 {
        let half = _mm256_set1_ps(0.5);
        let abs = _mm256_andnot_ps(_mm256_set1_ps(-0.0), x);
        // minps returns its second operand for a NaN: NaN stays NaN.
        let ax = _mm256_min_ps(_mm256_set1_ps(GELU_ERF_CLAMP), abs);
        // x² = q + q_lo exactly.
        let q = _mm256_mul_ps(ax, ax);
        let q_lo = _mm256_fmsub_ps(ax, ax, q);
        // Small x²: 0.5·(1 ± erf) = 0.5 ± |x|·Q(x²), one rounding.
        let half_erf = horner(&HALF_ERF, q);
        let small_pos = _mm256_fmadd_ps(ax, half_erf, half);
        let small_neg = _mm256_fnmadd_ps(ax, half_erf, half);
        // Large x²: 0.5·erfc = exp(-q/2)·(1 - q_lo/2)·N/D.
        let e = exp(_mm256_mul_ps(_mm256_set1_ps(-0.5), q));
        let e = _mm256_fnmadd_ps(_mm256_mul_ps(half, q_lo), e, e);
        let ratio = _mm256_div_ps(horner(&HALF_ERFCX_NUM, ax), horner(&HALF_ERFCX_DEN, ax));
        let half_erfc = _mm256_mul_ps(e, ratio);
        let large_pos = _mm256_sub_ps(_mm256_set1_ps(1.0), half_erfc);
        let positive = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_setzero_ps());
        let use_small_pos = _mm256_cmp_ps::<_CMP_LT_OQ>(q, _mm256_set1_ps(SMALL_SQUARE_POSITIVE));
        let use_small_neg = _mm256_cmp_ps::<_CMP_LT_OQ>(q, _mm256_set1_ps(SMALL_SQUARE_NEGATIVE));
        let factor_pos = _mm256_blendv_ps(large_pos, small_pos, use_small_pos);
        let factor_neg = _mm256_blendv_ps(half_erfc, small_neg, use_small_neg);
        let factor = _mm256_blendv_ps(factor_neg, factor_pos, positive);
        // Past the clamp the negative side's factor is 0: -15·0 = -0, also for -inf.
        let xm = _mm256_max_ps(_mm256_set1_ps(-GELU_ERF_CLAMP), x);
        _mm256_mul_ps(xm, factor)
    }

    /// Defines a slice loop over a register function (the tail through a padded buffer).
    macro_rules! slice_loop {
        ($(#[$doc:meta])* $name:ident => $op:ident) => {
            $(#[$doc])*
            ///
            /// # Safety
            /// The CPU has AVX2 and FMA.
            #[target_feature(enable = "avx2,fma")]
            pub(crate) unsafe fn $name(xs: &mut [f32]) {
                let mut chunks = xs.chunks_exact_mut(8);
                for c in &mut chunks {
                    // `c` holds exactly 8 values.
                    _mm256_storeu_ps(c.as_mut_ptr(), $op(_mm256_loadu_ps(c.as_ptr())));
                }
                let rest = chunks.into_remainder();
                if !rest.is_empty() {
                    let mut buf = [0f32; 8];
                    buf[..rest.len()].copy_from_slice(rest);
                    _mm256_storeu_ps(buf.as_mut_ptr(), $op(_mm256_loadu_ps(buf.as_ptr())));
                    rest.copy_from_slice(&buf[..rest.len()]);
                }
            }
        };
    }

    slice_loop!(
        /// `x ← eˣ` over a slice.
        exp_slice => exp
    );
    slice_loop!(
        /// SiLU over a slice.
        silu_slice => silu
    );
    slice_loop!(
        /// GELU-erf over a slice.
        gelu_erf_slice => gelu_erf
    );
    slice_loop!(
        /// GELU-tanh over a slice.
        gelu_tanh_slice => gelu_tanh
    );
    slice_loop!(
        /// Quick GELU over a slice.
        quick_gelu_slice => quick_gelu
    );
}

/// The AVX-512F level: [`avx2`]'s `exp` and `gelu_erf` on sixteen lanes, with the same
/// operations lane by lane (so the same results to the bit).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    use super::avx2::{EXPM1_OVER_R, EXP_HI, EXP_LO, LN2_HI, LN2_LO, LOG2E};
    use super::*;

    /// A polynomial by Horner's rule with FMAs, highest power first.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn horner<const N: usize>(coefficients: &[f32; N], x: __m512) -> __m512 {
        let mut p = _mm512_set1_ps(coefficients[0]);
        for &c in &coefficients[1..] {
            p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(c));
        }
        p
    }

    /// [`super::avx2::exp`] on sixteen lanes.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(crate) unsafe fn exp(x: __m512) -> __m512 {
        let x = _mm512_min_ps(
            _mm512_set1_ps(EXP_HI),
            _mm512_max_ps(_mm512_set1_ps(EXP_LO), x),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let p = _mm512_fmadd_ps(horner(&EXPM1_OVER_R, r), r, _mm512_set1_ps(1.0));
        let n = _mm512_cvtps_epi32(n);
        let n1 = _mm512_srai_epi32::<1>(n);
        let n2 = _mm512_sub_epi32(n, n1);
        let bias = _mm512_set1_epi32(127);
        let s1 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n1, bias)));
        let s2 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n2, bias)));
        _mm512_mul_ps(_mm512_mul_ps(p, s1), s2)
    }

    /// [`super::avx2::sigmoid`] on sixteen lanes.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(crate) unsafe fn sigmoid(z: __m512) -> __m512 {
        let sign = _mm512_set1_epi32(i32::MIN);
        let e = exp(_mm512_castsi512_ps(_mm512_or_si512(
            _mm512_castps_si512(z),
            sign,
        )));
        let one = _mm512_set1_ps(1.0);
        // Lanes with the sign bit set (z ≤ -0) take e/(1+e), the others 1/(1+e).
        let negative = _mm512_test_epi32_mask(_mm512_castps_si512(z), sign);
        _mm512_div_ps(
            _mm512_mask_blend_ps(negative, one, e),
            _mm512_add_ps(one, e),
        )
    }

    /// [`super::avx2::silu`] on sixteen lanes.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(crate) unsafe fn silu(x: __m512) -> __m512 {
        _mm512_mul_ps(_mm512_max_ps(_mm512_set1_ps(-f32::MAX), x), sigmoid(x))
    }

    /// [`super::avx2::gelu_erf`] on sixteen lanes.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(crate) unsafe fn gelu_erf(x: __m512) -> __m512 {
        let half = _mm512_set1_ps(0.5);
        let abs = _mm512_abs_ps(x);
        let ax = _mm512_min_ps(_mm512_set1_ps(GELU_ERF_CLAMP), abs);
        let q = _mm512_mul_ps(ax, ax);
        let q_lo = _mm512_fmsub_ps(ax, ax, q);
        let half_erf = horner(&HALF_ERF, q);
        let small_pos = _mm512_fmadd_ps(ax, half_erf, half);
        let small_neg = _mm512_fnmadd_ps(ax, half_erf, half);
        let e = exp(_mm512_mul_ps(_mm512_set1_ps(-0.5), q));
        let e = _mm512_fnmadd_ps(_mm512_mul_ps(half, q_lo), e, e);
        let ratio = _mm512_div_ps(horner(&HALF_ERFCX_NUM, ax), horner(&HALF_ERFCX_DEN, ax));
        let half_erfc = _mm512_mul_ps(e, ratio);
        let large_pos = _mm512_sub_ps(_mm512_set1_ps(1.0), half_erfc);
        let positive = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_setzero_ps());
        let use_small_pos =
            _mm512_cmp_ps_mask::<_CMP_LT_OQ>(q, _mm512_set1_ps(SMALL_SQUARE_POSITIVE));
        let use_small_neg =
            _mm512_cmp_ps_mask::<_CMP_LT_OQ>(q, _mm512_set1_ps(SMALL_SQUARE_NEGATIVE));
        let factor_pos = _mm512_mask_blend_ps(use_small_pos, large_pos, small_pos);
        let factor_neg = _mm512_mask_blend_ps(use_small_neg, half_erfc, small_neg);
        let factor = _mm512_mask_blend_ps(positive, factor_neg, factor_pos);
        let xm = _mm512_max_ps(_mm512_set1_ps(-GELU_ERF_CLAMP), x);
        _mm512_mul_ps(xm, factor)
    }
}

#[cfg(test)]
mod tests;
