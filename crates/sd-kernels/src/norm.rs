//! Normalizations on f32 slices: GroupNorm on NCHW data (optionally fused with SiLU),
//! LayerNorm over the last dimension, and GEGLU.
//!
//! Statistics are accumulated in f64 from values shifted by the first one (so a large mean
//! costs no accuracy), over chunks of [`CHUNK`] elements whose partial sums are combined in
//! chunk order: the result is bit-identical for any thread count. The normalizing pass reads
//! each value once, centres it on the mean rounded to f32 (exact for values near the mean),
//! and applies `rstd`, the affine weight and bias (and SiLU) in the same pass.
//!
//! Every function has an `_in_place` twin where the output has the input's shape: it
//! overwrites the input and needs no second buffer.

use rayon::prelude::*;

use crate::cpu::{self, Level};
use crate::math::{self, Activation};

/// Elements per reduction chunk and per normalizing task.
pub const CHUNK: usize = 1 << 14;

/// The product of `dims`, panicking with `what` when it overflows.
fn size(what: &str, dims: &[usize]) -> usize {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .unwrap_or_else(|| panic!("{what}: shape {dims:?} overflows usize"))
}

/// `(Σ (x - shift), Σ (x - shift)²)` over `xs`, in f64.
fn partial_sums(level: Level, xs: &[f32], shift: f32) -> (f64, f64) {
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 | Level::Amx => {
            // SAFETY: a thread only runs at a level its CPU has; both imply AVX-512F.
            unsafe { avx512::partial_sums(xs, shift) }
        }
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => {
            // SAFETY: a thread only runs at a level its CPU has; AVX2 implies FMA here.
            unsafe { avx2::partial_sums(xs, shift) }
        }
        _ => generic::partial_sums(xs, shift),
    }
}

/// `(mean, 1/√(variance + eps))` of `xs` (population variance), reduced chunk by chunk in a
/// fixed order (over the pool when `xs` spans several chunks).
fn moments(level: Level, xs: &[f32], eps: f32) -> (f64, f64) {
    let Some(&shift) = xs.first() else {
        return (0.0, 1.0 / (eps as f64).sqrt());
    };
    let (s1, s2) = if xs.len() <= CHUNK {
        partial_sums(level, xs, shift)
    } else {
        let parts: Vec<(f64, f64)> = xs
            .par_chunks(CHUNK)
            .map(|c| partial_sums(level, c, shift))
            .collect();
        parts
            .iter()
            .fold((0.0, 0.0), |(a, b), &(c, d)| (a + c, b + d))
    };
    let n = xs.len() as f64;
    let m = s1 / n;
    let variance = (s2 / n - m * m).max(0.0);
    (shift as f64 + m, 1.0 / (variance + eps as f64).sqrt())
}

/// The per-channel form of a normalization: `y = (x - center)·scale + shift`, `center` the
/// mean rounded to f32 and `shift` absorbing the rounding.
#[derive(Debug, Clone, Copy)]
struct Affine {
    center: f32,
    scale: f32,
    shift: f32,
}

impl Affine {
    /// `(x - mean)·rstd·weight + bias` in that form.
    fn new(mean: f64, rstd: f64, weight: f64, bias: f64) -> Self {
        let center = mean as f32;
        let scale = rstd * weight;
        Self {
            center,
            scale: scale as f32,
            shift: (bias + (center as f64 - mean) * scale) as f32,
        }
    }
}

/// `dst[i] = act((src[i] - center)·scale + shift)`; `src` `None` reads `dst` (in place).
fn affine(level: Level, src: Option<&[f32]>, dst: &mut [f32], a: Affine, silu: bool) {
    if let Some(s) = src {
        assert_eq!(s.len(), dst.len(), "affine lengths");
    }
    let d = dst.as_mut_ptr();
    let s = src.map_or(d as *const f32, |s| s.as_ptr());
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 | Level::Amx => {
            // SAFETY: the level implies AVX-512F, AVX2 and FMA; `s` and `d` hold `dst.len()`
            // values, and `s` is either disjoint from `d` or equal to it (each value is read
            // before the same index is written).
            unsafe { avx512::affine(s, d, dst.len(), a, silu) }
        }
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => {
            // SAFETY: the level implies AVX2 and FMA; `s` and `d` hold `dst.len()` values,
            // and `s` is either disjoint from `d` or equal to it (each value is read before
            // the same index is written).
            unsafe { avx2::affine(s, d, dst.len(), a, silu) }
        }
        _ => {
            // SAFETY: as above; the generic loop reads index i before writing it.
            unsafe { generic::affine(s, d, dst.len(), a, silu) }
        }
    }
}

/// GroupNorm on NCHW data, optionally followed by SiLU: for each batch item and each of
/// `groups` groups of `channels / groups` channels, `out = (x - mean)/√(var + eps)·weight[c]
/// + bias[c]` with the group's mean and population variance, then `x·sigmoid(x)` if `silu`.
///
/// `x` and `out` are `batch x channels x spatial` (`spatial` = height·width); `weight` and
/// `bias` have `channels` values. Panics when the sizes disagree or `groups` does not divide
/// `channels`.
#[allow(clippy::too_many_arguments)]
pub fn group_norm(
    x: &[f32],
    batch: usize,
    channels: usize,
    spatial: usize,
    groups: usize,
    weight: &[f32],
    bias: &[f32],
    eps: f32,
    silu: bool,
    out: &mut [f32],
) {
    let shape = GroupShape::new(batch, channels, spatial, groups, weight, bias);
    assert_eq!(x.len(), shape.len, "group_norm input size");
    assert_eq!(out.len(), shape.len, "group_norm output size");
    group_norm_impl(shape, Some(x), out, weight, bias, eps, silu);
}

/// [`group_norm`] overwriting `data` (no second buffer).
#[allow(clippy::too_many_arguments)]
pub fn group_norm_in_place(
    data: &mut [f32],
    batch: usize,
    channels: usize,
    spatial: usize,
    groups: usize,
    weight: &[f32],
    bias: &[f32],
    eps: f32,
    silu: bool,
) {
    let shape = GroupShape::new(batch, channels, spatial, groups, weight, bias);
    assert_eq!(data.len(), shape.len, "group_norm data size");
    group_norm_impl(shape, None, data, weight, bias, eps, silu);
}

/// GroupNorm's checked dimensions.
#[derive(Debug, Clone, Copy)]
struct GroupShape {
    groups: usize,
    per_group: usize,
    spatial: usize,
    group_len: usize,
    len: usize,
}

impl GroupShape {
    fn new(
        batch: usize,
        channels: usize,
        spatial: usize,
        groups: usize,
        weight: &[f32],
        bias: &[f32],
    ) -> Self {
        assert!(
            groups > 0 && channels.is_multiple_of(groups),
            "group_norm: {groups} groups do not divide {channels} channels"
        );
        assert_eq!(weight.len(), channels, "group_norm weight size");
        assert_eq!(bias.len(), channels, "group_norm bias size");
        let per_group = channels / groups;
        Self {
            groups,
            per_group,
            spatial,
            group_len: size("group_norm", &[per_group, spatial]),
            len: size("group_norm", &[batch, channels, spatial]),
        }
    }
}

fn group_norm_impl(
    shape: GroupShape,
    src: Option<&[f32]>,
    dst: &mut [f32],
    weight: &[f32],
    bias: &[f32],
    eps: f32,
    silu: bool,
) {
    if shape.len == 0 {
        return;
    }
    let level = cpu::level();
    let GroupShape {
        groups,
        per_group,
        spatial,
        group_len,
        ..
    } = shape;
    dst.par_chunks_mut(group_len)
        .enumerate()
        .for_each(|(bg, out)| {
            let input = src.map(|s| &s[bg * group_len..][..group_len]);
            let (mean, rstd) = moments(level, input.unwrap_or(out), eps);
            let first = (bg % groups) * per_group;
            out.par_chunks_mut(spatial)
                .with_min_len((CHUNK / spatial).max(1))
                .enumerate()
                .for_each(|(c, row)| {
                    let channel = first + c;
                    let a = Affine::new(mean, rstd, weight[channel] as f64, bias[channel] as f64);
                    let input = input.map(|s| &s[c * spatial..][..spatial]);
                    if spatial <= CHUNK {
                        affine(level, input, row, a, silu);
                    } else {
                        row.par_chunks_mut(CHUNK)
                            .enumerate()
                            .for_each(|(k, piece)| {
                                let input = input.map(|s| &s[k * CHUNK..][..piece.len()]);
                                affine(level, input, piece, a, silu);
                            });
                    }
                });
        });
}

/// LayerNorm over the last dimension: each of `rows` rows of `dim` values becomes
/// `(x - mean)/√(var + eps)·weight + bias` (population variance; a missing weight is 1, a
/// missing bias 0). `x` and `out` hold `rows·dim` values, `weight` and `bias` `dim`.
pub fn layer_norm(
    x: &[f32],
    rows: usize,
    dim: usize,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f32,
    out: &mut [f32],
) {
    let len = layer_shape(rows, dim, weight, bias);
    assert_eq!(x.len(), len, "layer_norm input size");
    assert_eq!(out.len(), len, "layer_norm output size");
    layer_norm_impl(Some(x), out, dim, weight, bias, eps);
}

/// [`layer_norm`] overwriting `data` (no second buffer).
pub fn layer_norm_in_place(
    data: &mut [f32],
    rows: usize,
    dim: usize,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f32,
) {
    let len = layer_shape(rows, dim, weight, bias);
    assert_eq!(data.len(), len, "layer_norm data size");
    layer_norm_impl(None, data, dim, weight, bias, eps);
}

/// Checks LayerNorm's parameters; the element count.
fn layer_shape(rows: usize, dim: usize, weight: Option<&[f32]>, bias: Option<&[f32]>) -> usize {
    if let Some(w) = weight {
        assert_eq!(w.len(), dim, "layer_norm weight size");
    }
    if let Some(b) = bias {
        assert_eq!(b.len(), dim, "layer_norm bias size");
    }
    size("layer_norm", &[rows, dim])
}

fn layer_norm_impl(
    src: Option<&[f32]>,
    dst: &mut [f32],
    dim: usize,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f32,
) {
    if dst.is_empty() {
        return;
    }
    let level = cpu::level();
    dst.par_chunks_mut(dim)
        .with_min_len((CHUNK / dim).max(1))
        .enumerate()
        .for_each(|(r, out)| {
            let input = src.map(|s| &s[r * dim..][..dim]);
            let (mean, rstd) = moments(level, input.unwrap_or(out), eps);
            // (x - mean)·rstd = (x - center)·rstd + (center - mean)·rstd.
            let a = Affine::new(mean, rstd, 1.0, 0.0);
            let d = out.as_mut_ptr();
            let s = input.map_or(d as *const f32, |s| s.as_ptr());
            match level {
                #[cfg(target_arch = "x86_64")]
                Level::Avx2 | Level::Avx512 | Level::Amx => {
                    // SAFETY: the level implies AVX2 and FMA; `s` and `d` hold `dim` values
                    // (`weight` and `bias` too, checked), `s` disjoint from `d` or equal.
                    unsafe { avx2::layer_row(s, d, dim, a, weight, bias) }
                }
                _ => {
                    // SAFETY: as above.
                    unsafe { generic::layer_row(s, d, dim, a, weight, bias) }
                }
            }
        });
}

/// GEGLU: each row of `projected` is `[a (inner values) | b (inner values)]`, and
/// `out[r, j] = a[r, j] · gelu_erf(b[r, j])`. `projected` holds `rows·2·inner` values, `out`
/// `rows·inner`.
pub fn geglu(projected: &[f32], rows: usize, inner: usize, out: &mut [f32]) {
    assert_eq!(
        projected.len(),
        size("geglu", &[rows, 2, inner]),
        "geglu input size"
    );
    assert_eq!(out.len(), rows * inner, "geglu output size");
    if out.is_empty() {
        return;
    }
    let level = cpu::level();
    out.par_chunks_mut(inner)
        .with_min_len((CHUNK / inner).max(1))
        .enumerate()
        .for_each(|(r, out)| {
            let (a, b) = projected[2 * r * inner..][..2 * inner].split_at(inner);
            geglu_row(level, a, b, out);
        });
}

/// One row of an interleaved GEGLU projection (groups of 8 values then their 8 gates, `bias`
/// in the same order) into `len / 8` groups of `value · gelu_erf(gate)` at `out`, the bias
/// added first: the same operations as adding the bias, then [`geglu_row`].
///
/// # Safety
/// `out` is valid for writes of `len` values (which may be uninitialised: only written).
pub(crate) unsafe fn geglu_interleaved(
    level: Level,
    src: &[f32],
    bias: Option<&[f32]>,
    out: *mut f32,
    len: usize,
) {
    assert!(len.is_multiple_of(8) && src.len() >= 2 * len);
    assert!(bias.is_none_or(|b| b.len() >= 2 * len));
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 | Level::Amx => {
            // SAFETY: the level implies AVX-512F, AVX2 and FMA; sizes checked above; `out` is
            // the caller's.
            unsafe { avx512::geglu_interleaved(src, bias, out, len / 8) }
        }
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => {
            // SAFETY: the level implies AVX2 and FMA; sizes checked above; `out` is the
            // caller's.
            unsafe { avx2::geglu_interleaved(src, bias, out, len / 8) }
        }
        _ => {
            for g in 0..len / 8 {
                for t in 0..8 {
                    let (mut value, mut gate) = (src[16 * g + t], src[16 * g + 8 + t]);
                    if let Some(b) = bias {
                        value += b[16 * g + t];
                        gate += b[16 * g + 8 + t];
                    }
                    // SAFETY: `8 g + t < len`, the caller's contract.
                    unsafe {
                        out.add(8 * g + t)
                            .write(value * Activation::GeluErf.scalar(gate))
                    };
                }
            }
        }
    }
}

/// `out[j] = a[j] · gelu_erf(b[j])` at `level` (the same operations as [`geglu`]).
fn geglu_row(level: Level, a: &[f32], b: &[f32], out: &mut [f32]) {
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 | Level::Avx512 | Level::Amx => {
            // SAFETY: the level implies AVX2 and FMA.
            unsafe { avx2::geglu_row(a, b, out) }
        }
        _ => {
            for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                *o = a * Activation::GeluErf.scalar(b);
            }
        }
    }
}

/// The generic level.
mod generic {
    use super::*;

    /// Eight f64 lanes of `x - shift` and its square, summed pairwise at the end.
    pub(super) fn partial_sums(xs: &[f32], shift: f32) -> (f64, f64) {
        let shift = shift as f64;
        let (mut s1, mut s2) = ([0f64; 8], [0f64; 8]);
        let mut chunks = xs.chunks_exact(8);
        for c in &mut chunks {
            for i in 0..8 {
                let d = c[i] as f64 - shift;
                s1[i] += d;
                s2[i] += d * d;
            }
        }
        for (i, &x) in chunks.remainder().iter().enumerate() {
            let d = x as f64 - shift;
            s1[i] += d;
            s2[i] += d * d;
        }
        (lanes(s1), lanes(s2))
    }

    /// The sum of eight lanes in a fixed tree.
    fn lanes(s: [f64; 8]) -> f64 {
        ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]))
    }

    /// `d[i] = act((s[i] - center)·scale + shift)`.
    ///
    /// # Safety
    /// `s` and `d` hold `len` values; `s` is disjoint from `d` or equal to it.
    pub(super) unsafe fn affine(s: *const f32, d: *mut f32, len: usize, a: Affine, silu: bool) {
        for i in 0..len {
            let y = (*s.add(i) - a.center) * a.scale + a.shift;
            *d.add(i) = if silu { math::scalar::silu(y) } else { y };
        }
    }

    /// One LayerNorm row: `d[i] = ((s[i] - center)·scale + shift)·w[i] + b[i]`.
    ///
    /// # Safety
    /// `s` and `d` hold `len` values (and `weight`, `bias` when given); `s` is disjoint from
    /// `d` or equal to it.
    pub(super) unsafe fn layer_row(
        s: *const f32,
        d: *mut f32,
        len: usize,
        a: Affine,
        weight: Option<&[f32]>,
        bias: Option<&[f32]>,
    ) {
        for i in 0..len {
            let mut y = (*s.add(i) - a.center) * a.scale + a.shift;
            if let Some(w) = weight {
                y *= w[i];
            }
            if let Some(b) = bias {
                y += b[i];
            }
            *d.add(i) = y;
        }
    }
}

/// The AVX2 + FMA level.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::*;
    use crate::math::avx2 as vmath;

    /// The sum of a register's four f64 lanes, in a fixed order.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn hsum(v: __m256d) -> f64 {
        let pair = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd::<1>(v));
        _mm_cvtsd_f64(_mm_add_sd(pair, _mm_unpackhi_pd(pair, pair)))
    }

    /// `(Σ (x - shift), Σ (x - shift)²)` in f64: sixteen values a step into four pairs of
    /// f64 accumulators.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn partial_sums(xs: &[f32], shift: f32) -> (f64, f64) {
        let k = _mm256_set1_pd(shift as f64);
        let mut s1 = [_mm256_setzero_pd(); 4];
        let mut s2 = [_mm256_setzero_pd(); 4];
        let mut chunks = xs.chunks_exact(16);
        for c in &mut chunks {
            // `c` holds 16 values: four loads of 4.
            for (j, (a1, a2)) in s1.iter_mut().zip(s2.iter_mut()).enumerate() {
                let d = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(c.as_ptr().add(4 * j))), k);
                *a1 = _mm256_add_pd(*a1, d);
                *a2 = _mm256_fmadd_pd(d, d, *a2);
            }
        }
        let (mut t1, mut t2) = (0.0, 0.0);
        for &x in chunks.remainder() {
            let d = x as f64 - shift as f64;
            t1 += d;
            t2 += d * d;
        }
        let v1 = _mm256_add_pd(_mm256_add_pd(s1[0], s1[1]), _mm256_add_pd(s1[2], s1[3]));
        let v2 = _mm256_add_pd(_mm256_add_pd(s2[0], s2[1]), _mm256_add_pd(s2[2], s2[3]));
        (hsum(v1) + t1, hsum(v2) + t2)
    }

    /// Loads `n < 8` values at `p` into a register, zeros above.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_tail(p: *const f32, n: usize) -> __m256 {
        let mut buf = [0f32; 8];
        std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n);
        _mm256_loadu_ps(buf.as_ptr())
    }

    /// Stores the low `n < 8` lanes of `v` at `p`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store_tail(p: *mut f32, v: __m256, n: usize) {
        let mut buf = [0f32; 8];
        _mm256_storeu_ps(buf.as_mut_ptr(), v);
        std::ptr::copy_nonoverlapping(buf.as_ptr(), p, n);
    }

    /// `d[i] = act((s[i] - center)·scale + shift)`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `s` and `d` hold `len` values; `s` is disjoint from `d` or
    /// equal to it.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn affine(s: *const f32, d: *mut f32, len: usize, a: Affine, silu: bool) {
        let center = _mm256_set1_ps(a.center);
        let scale = _mm256_set1_ps(a.scale);
        let shift = _mm256_set1_ps(a.shift);
        let f = |x: __m256| _mm256_fmadd_ps(_mm256_sub_ps(x, center), scale, shift);
        let full = len - len % 8;
        if silu {
            for i in (0..full).step_by(8) {
                _mm256_storeu_ps(d.add(i), vmath::silu(f(_mm256_loadu_ps(s.add(i)))));
            }
        } else {
            for i in (0..full).step_by(8) {
                _mm256_storeu_ps(d.add(i), f(_mm256_loadu_ps(s.add(i))));
            }
        }
        if full < len {
            let y = f(load_tail(s.add(full), len - full));
            let y = if silu { vmath::silu(y) } else { y };
            store_tail(d.add(full), y, len - full);
        }
    }

    /// One LayerNorm row: `d[i] = ((s[i] - center)·scale + shift)·w[i] + b[i]`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `s` and `d` hold `len` values (and `weight`, `bias` when
    /// given); `s` is disjoint from `d` or equal to it.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn layer_row(
        s: *const f32,
        d: *mut f32,
        len: usize,
        a: Affine,
        weight: Option<&[f32]>,
        bias: Option<&[f32]>,
    ) {
        let center = _mm256_set1_ps(a.center);
        let scale = _mm256_set1_ps(a.scale);
        let shift = _mm256_set1_ps(a.shift);
        let w = weight.map(|w| w.as_ptr());
        let b = bias.map(|b| b.as_ptr());
        let row = |x: __m256, w: Option<__m256>, b: Option<__m256>| {
            let t = _mm256_fmadd_ps(_mm256_sub_ps(x, center), scale, shift);
            match (w, b) {
                (Some(w), Some(b)) => _mm256_fmadd_ps(t, w, b),
                (Some(w), None) => _mm256_mul_ps(t, w),
                (None, Some(b)) => _mm256_add_ps(t, b),
                (None, None) => t,
            }
        };
        let full = len - len % 8;
        for i in (0..full).step_by(8) {
            let wv = w.map(|w| _mm256_loadu_ps(w.add(i)));
            let bv = b.map(|b| _mm256_loadu_ps(b.add(i)));
            _mm256_storeu_ps(d.add(i), row(_mm256_loadu_ps(s.add(i)), wv, bv));
        }
        if full < len {
            let n = len - full;
            let wv = w.map(|w| load_tail(w.add(full), n));
            let bv = b.map(|b| load_tail(b.add(full), n));
            store_tail(d.add(full), row(load_tail(s.add(full), n), wv, bv), n);
        }
    }

    /// [`super::geglu_interleaved`] with AVX2, `groups` groups.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `src` (and `bias`) hold `16 · groups` values; `o` is valid
    /// for writes of `8 · groups`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn geglu_interleaved(
        src: &[f32],
        bias: Option<&[f32]>,
        o: *mut f32,
        groups: usize,
    ) {
        let s = src.as_ptr();
        for g in 0..groups {
            let mut value = _mm256_loadu_ps(s.add(16 * g));
            let mut gate = _mm256_loadu_ps(s.add(16 * g + 8));
            if let Some(b) = bias {
                value = _mm256_add_ps(value, _mm256_loadu_ps(b.as_ptr().add(16 * g)));
                gate = _mm256_add_ps(gate, _mm256_loadu_ps(b.as_ptr().add(16 * g + 8)));
            }
            _mm256_storeu_ps(o.add(8 * g), _mm256_mul_ps(value, vmath::gelu_erf(gate)));
        }
    }

    /// One GEGLU row: `out[j] = a[j] · gelu_erf(b[j])`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn geglu_row(a: &[f32], b: &[f32], out: &mut [f32]) {
        let len = out.len().min(a.len()).min(b.len());
        let (a, b, o) = (a.as_ptr(), b.as_ptr(), out.as_mut_ptr());
        let full = len - len % 8;
        for i in (0..full).step_by(8) {
            let g = vmath::gelu_erf(_mm256_loadu_ps(b.add(i)));
            _mm256_storeu_ps(o.add(i), _mm256_mul_ps(_mm256_loadu_ps(a.add(i)), g));
        }
        if full < len {
            let n = len - full;
            let g = vmath::gelu_erf(load_tail(b.add(full), n));
            store_tail(o.add(full), _mm256_mul_ps(load_tail(a.add(full), n), g), n);
        }
    }
}

/// The AVX-512F level (what has a wider version than [`avx2`]).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::Affine;
    use crate::math::avx512 as vmath;

    /// [`super::avx2::partial_sums`] on 512-bit registers: the same f64 lanes in the same
    /// order (eight values a register, two registers a step of sixteen), so the same sums.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn partial_sums(xs: &[f32], shift: f32) -> (f64, f64) {
        let k = _mm512_set1_pd(shift as f64);
        let mut s1 = [_mm512_setzero_pd(); 2];
        let mut s2 = [_mm512_setzero_pd(); 2];
        let mut chunks = xs.chunks_exact(16);
        for c in &mut chunks {
            for (j, (a1, a2)) in s1.iter_mut().zip(s2.iter_mut()).enumerate() {
                let d = _mm512_sub_pd(_mm512_cvtps_pd(_mm256_loadu_ps(c.as_ptr().add(8 * j))), k);
                *a1 = _mm512_add_pd(*a1, d);
                *a2 = _mm512_fmadd_pd(d, d, *a2);
            }
        }
        let (mut t1, mut t2) = (0.0, 0.0);
        for &x in chunks.remainder() {
            let d = x as f64 - shift as f64;
            t1 += d;
            t2 += d * d;
        }
        // (lanes 0-3 + lanes 4-7) of each register: avx2's s[0] + s[1] and s[2] + s[3].
        let fold =
            |v: __m512d| _mm256_add_pd(_mm512_castpd512_pd256(v), _mm512_extractf64x4_pd::<1>(v));
        let v1 = _mm256_add_pd(fold(s1[0]), fold(s1[1]));
        let v2 = _mm256_add_pd(fold(s2[0]), fold(s2[1]));
        (super::avx2::hsum(v1) + t1, super::avx2::hsum(v2) + t2)
    }

    /// [`super::avx2::affine`] on sixteen lanes (the tail through masked loads and stores).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `s` and `d` hold `len` values; `s` is disjoint from `d` or
    /// equal to it.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn affine(s: *const f32, d: *mut f32, len: usize, a: Affine, silu: bool) {
        let center = _mm512_set1_ps(a.center);
        let scale = _mm512_set1_ps(a.scale);
        let shift = _mm512_set1_ps(a.shift);
        let f = |x: __m512| {
            let y = _mm512_fmadd_ps(_mm512_sub_ps(x, center), scale, shift);
            if silu {
                vmath::silu(y)
            } else {
                y
            }
        };
        let full = len - len % 16;
        for i in (0..full).step_by(16) {
            _mm512_storeu_ps(d.add(i), f(_mm512_loadu_ps(s.add(i))));
        }
        if full < len {
            let mask = ((1u32 << (len - full)) - 1) as __mmask16;
            let y = f(_mm512_maskz_loadu_ps(mask, s.add(full)));
            _mm512_mask_storeu_ps(d.add(full), mask, y);
        }
    }

    /// [`super::geglu_interleaved`] with AVX-512, two groups a step (`groups` groups; an odd
    /// last one through [`super::avx2`], the same operations).
    ///
    /// # Safety
    /// The CPU has AVX-512F, AVX2 and FMA; `src` (and `bias`) hold `16 · groups` values; `o`
    /// is valid for writes of `8 · groups`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn geglu_interleaved(
        src: &[f32],
        bias: Option<&[f32]>,
        o: *mut f32,
        groups: usize,
    ) {
        let s = src.as_ptr();
        for p in 0..groups / 2 {
            // Two groups: [values 0, gates 0] and [values 1, gates 1], eight each.
            let mut first = _mm512_loadu_ps(s.add(32 * p));
            let mut second = _mm512_loadu_ps(s.add(32 * p + 16));
            if let Some(b) = bias {
                first = _mm512_add_ps(first, _mm512_loadu_ps(b.as_ptr().add(32 * p)));
                second = _mm512_add_ps(second, _mm512_loadu_ps(b.as_ptr().add(32 * p + 16)));
            }
            let value = _mm512_shuffle_f32x4::<0b01_00_01_00>(first, second);
            let gate = _mm512_shuffle_f32x4::<0b11_10_11_10>(first, second);
            _mm512_storeu_ps(o.add(16 * p), _mm512_mul_ps(value, vmath::gelu_erf(gate)));
        }
        if groups % 2 == 1 {
            let done = groups - 1;
            super::avx2::geglu_interleaved(
                &src[16 * done..],
                bias.map(|b| &b[16 * done..]),
                o.add(8 * done),
                1,
            );
        }
    }
}

#[cfg(test)]
mod tests;
