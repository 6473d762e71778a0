//! The right operand B (`K x N`) packed once: `KC`-deep blocks of `NR`-wide column panels,
//! in f32 or bf16.

use half::{bf16, f16};
use rayon::prelude::*;

use super::{KC, NR};

/// How packed values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// 32-bit floats.
    F32,
    /// bfloat16 (half the memory; widened to f32 as each panel is used).
    Bf16,
}

/// A value a matrix can be packed from.
pub trait Element: Copy + Send + Sync {
    /// The value as f32.
    fn to_f32(self) -> f32;
    /// The value as bf16 bits (rounded to nearest even when it is wider).
    fn to_bf16_bits(self) -> u16 {
        bf16::from_f32(self.to_f32()).to_bits()
    }
}

impl Element for f32 {
    fn to_f32(self) -> f32 {
        self
    }
}

impl Element for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn to_bf16_bits(self) -> u16 {
        self.to_bits()
    }
}

impl Element for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

#[derive(Debug, Clone)]
enum Data {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
}

/// A `K x N` matrix in the layout the micro-kernels read.
#[derive(Debug, Clone)]
pub struct PackedB {
    k: usize,
    n: usize,
    data: Data,
}

impl PackedB {
    /// Packs `B[k][n] = src[k·ld + n]`.
    pub fn from_kxn<T: Element>(
        src: &[T],
        k: usize,
        n: usize,
        ld: usize,
        storage: Storage,
    ) -> Self {
        assert!(
            k == 0 || n == 0 || (k - 1) * ld + n <= src.len(),
            "B source too small"
        );
        Self::pack(k, n, storage, |kk, nn| src[kk * ld + nn])
    }

    /// Packs `B[k][n] = src[n·ld + k]`: a weight stored `(out, in)` gives `x · Wᵀ`.
    pub fn from_nxk<T: Element>(
        src: &[T],
        k: usize,
        n: usize,
        ld: usize,
        storage: Storage,
    ) -> Self {
        assert!(
            k == 0 || n == 0 || (n - 1) * ld + k <= src.len(),
            "B source too small"
        );
        Self::pack(k, n, storage, |kk, nn| src[nn * ld + kk])
    }

    fn pack<T: Element>(
        k: usize,
        n: usize,
        storage: Storage,
        get: impl Fn(usize, usize) -> T + Sync,
    ) -> Self {
        let data = match storage {
            Storage::F32 => Data::F32(pack_blocks(k, n, &get, 0f32, T::to_f32)),
            Storage::Bf16 => Data::Bf16(pack_blocks(k, n, &get, 0u16, T::to_bf16_bits)),
        };
        Self { k, n, data }
    }

    /// Rows of B (the product's depth).
    pub fn depth(&self) -> usize {
        self.k
    }

    /// Columns of B.
    pub fn cols(&self) -> usize {
        self.n
    }

    /// How the values are stored.
    pub fn storage(&self) -> Storage {
        match self.data {
            Data::F32(_) => Storage::F32,
            Data::Bf16(_) => Storage::Bf16,
        }
    }

    /// Bytes the packed values take.
    pub fn bytes(&self) -> usize {
        match &self.data {
            Data::F32(d) => d.len() * 4,
            Data::Bf16(d) => d.len() * 2,
        }
    }

    /// B's value at `(k, n)` (for tests and slow paths).
    pub fn get(&self, k: usize, n: usize) -> f32 {
        assert!(k < self.k && n < self.n);
        let panels = self.n.div_ceil(NR);
        let k0 = k / KC * KC;
        let kc = KC.min(self.k - k0);
        let at = k0 * panels * NR + (n / NR) * kc * NR + (k - k0) * NR + n % NR;
        match &self.data {
            Data::F32(d) => d[at],
            Data::Bf16(d) => bf16::from_bits(d[at]).to_f32(),
        }
    }

    /// Panels `first .. first + count` (each `kc x NR`, consecutive) of the block starting at
    /// row `k0`, as f32: f32 panels in place, bf16 panels widened into `scratch`.
    pub(crate) fn panels<'s>(
        &'s self,
        k0: usize,
        kc: usize,
        first: usize,
        count: usize,
        scratch: &'s mut [f32],
    ) -> &'s [f32] {
        let panels = self.n.div_ceil(NR);
        debug_assert!(first + count <= panels);
        let at = k0 * panels * NR + first * kc * NR;
        let len = count * kc * NR;
        match &self.data {
            // Read in place: the panels are already consecutive, and a copy (once measured
            // faster on Zen 3 with one panel per call) cost 7% of a whole SD 1.5 image with
            // AVX-512's two-panel groups, since every block of A rows copies them again.
            Data::F32(d) => &d[at..at + len],
            Data::Bf16(d) => {
                let dst = &mut scratch[..len];
                widen_bf16(&d[at..at + len], dst);
                dst
            }
        }
    }
}

/// Packs `get(k, n)` converted by `convert` into `KC`-deep blocks of `NR`-wide panels, the
/// padding columns past `n` zero.
fn pack_blocks<T: Element, D: Copy + Send + Sync>(
    k: usize,
    n: usize,
    get: &(impl Fn(usize, usize) -> T + Sync),
    zero: D,
    convert: impl Fn(T) -> D + Sync,
) -> Vec<D> {
    let panels = n.div_ceil(NR);
    let mut data = vec![zero; k * panels * NR];
    if data.is_empty() {
        return data;
    }
    data.par_chunks_mut(KC * panels * NR)
        .enumerate()
        .for_each(|(b, block)| {
            let k0 = b * KC;
            let kc = KC.min(k - k0);
            for (p, panel) in block.chunks_exact_mut(kc * NR).enumerate() {
                for j in 0..NR.min(n - p * NR) {
                    for kk in 0..kc {
                        panel[kk * NR + j] = convert(get(k0 + kk, p * NR + j));
                    }
                }
            }
        });
    data
}

/// bf16 bits to f32: the bits are the f32's upper half.
pub(crate) fn widen_bf16(src: &[u16], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f32::from_bits((s as u32) << 16);
    }
}
