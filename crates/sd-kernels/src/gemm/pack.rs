//! Operands packed once (the weights): B (`K x N`) as `KC`-deep blocks of `NR`-wide column
//! panels, or A (`M x K`) as `KC`-deep blocks of `MR`-row panels, in f32 or bf16.

use half::{bf16, f16};
use rayon::prelude::*;

use super::amx::{self, Role};
use super::{KC, MR, NR};
use crate::cpu::{self, Level};

/// How packed values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// 32-bit floats.
    F32,
    /// bfloat16 (half the memory). Packed on the `amx` level, in AMX tiles that the tile
    /// products read as they are (the other operand rounded to bf16 too); on the others,
    /// widened to f32 as each panel is used.
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
    /// bf16 in AMX tiles (the layout of [`amx`]).
    Tiles(Vec<u16>, Role),
}

/// A `depth x len` matrix cut into `width`-wide panels along `len`, in `KC`-deep blocks
/// along the depth: the layout both packed operands share.
#[derive(Debug, Clone)]
struct Panels {
    depth: usize,
    len: usize,
    width: usize,
    data: Data,
}

impl Panels {
    /// Packs `get(k, j)` (`k < depth`, `j < len`), zero past `len`; bf16 on the `amx` level
    /// in tiles of `role`.
    fn pack<T: Element>(
        depth: usize,
        len: usize,
        width: usize,
        storage: Storage,
        role: Role,
        get: impl Fn(usize, usize) -> T + Sync,
    ) -> Self {
        let data = match storage {
            Storage::F32 => Data::F32(pack_blocks(depth, len, width, &get, 0f32, T::to_f32)),
            Storage::Bf16 if cpu::level() == Level::Amx => {
                Data::Tiles(amx::pack(depth, len, role, &get, T::to_bf16_bits), role)
            }
            Storage::Bf16 => {
                Data::Bf16(pack_blocks(depth, len, width, &get, 0u16, T::to_bf16_bits))
            }
        };
        Self {
            depth,
            len,
            width,
            data,
        }
    }

    fn storage(&self) -> Storage {
        match self.data {
            Data::F32(_) => Storage::F32,
            Data::Bf16(_) | Data::Tiles(..) => Storage::Bf16,
        }
    }

    fn bytes(&self) -> usize {
        match &self.data {
            Data::F32(d) => d.len() * 4,
            Data::Bf16(d) | Data::Tiles(d, _) => d.len() * 2,
        }
    }

    fn get(&self, k: usize, j: usize) -> f32 {
        assert!(k < self.depth && j < self.len);
        if let Data::Tiles(d, role) = &self.data {
            return bf16::from_bits(d[amx::index(self.depth, self.len, *role, k, j)]).to_f32();
        }
        let w = self.width;
        let panels = self.len.div_ceil(w);
        let k0 = k / KC * KC;
        let kc = KC.min(self.depth - k0);
        let at = k0 * panels * w + (j / w) * kc * w + (k - k0) * w + j % w;
        match &self.data {
            Data::F32(d) => d[at],
            Data::Bf16(d) => bf16::from_bits(d[at]).to_f32(),
            Data::Tiles(..) => unreachable!("tiles are read above"),
        }
    }

    /// The AMX tiles, when packed in them.
    fn tiles(&self) -> Option<&[u16]> {
        match &self.data {
            Data::Tiles(d, _) => Some(d),
            _ => None,
        }
    }

    fn panels<'s>(
        &'s self,
        k0: usize,
        kc: usize,
        first: usize,
        count: usize,
        scratch: &'s mut [f32],
    ) -> &'s [f32] {
        let w = self.width;
        let panels = self.len.div_ceil(w);
        debug_assert!(first + count <= panels);
        let at = k0 * panels * w + first * kc * w;
        let len = count * kc * w;
        match &self.data {
            // Read in place: the panels are already consecutive, and a copy (once measured
            // faster on Zen 3 with one panel per call) cost 7% of a whole SD 1.5 image with
            // AVX-512's two-panel groups, since every block of rows copied them again.
            Data::F32(d) => &d[at..at + len],
            Data::Bf16(d) => {
                let dst = &mut scratch[..len];
                widen_bf16(&d[at..at + len], dst);
                dst
            }
            // Tiles read on another level (a thread that forced one): element by element.
            Data::Tiles(d, role) => {
                let dst = &mut scratch[..len];
                for (p, panel) in dst.chunks_exact_mut(kc * w).enumerate() {
                    for (kk, values) in panel.chunks_exact_mut(w).enumerate() {
                        for (i, v) in values.iter_mut().enumerate() {
                            let j = (first + p) * w + i;
                            *v = if j < self.len {
                                let at = amx::index(self.depth, self.len, *role, k0 + kk, j);
                                bf16::from_bits(d[at]).to_f32()
                            } else {
                                0.0
                            };
                        }
                    }
                }
                dst
            }
        }
    }
}

/// A `K x N` matrix in the layout the micro-kernels read as their right operand.
#[derive(Debug, Clone)]
pub struct PackedB(Panels);

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
        Self(Panels::pack(k, n, NR, storage, Role::Pairs, |kk, nn| {
            src[kk * ld + nn]
        }))
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
        Self(Panels::pack(k, n, NR, storage, Role::Pairs, |kk, nn| {
            src[nn * ld + kk]
        }))
    }

    /// Rows of B (the product's depth).
    pub fn depth(&self) -> usize {
        self.0.depth
    }

    /// Columns of B.
    pub fn cols(&self) -> usize {
        self.0.len
    }

    /// How the values are stored.
    pub fn storage(&self) -> Storage {
        self.0.storage()
    }

    /// Bytes the packed values take.
    pub fn bytes(&self) -> usize {
        self.0.bytes()
    }

    /// B's value at `(k, n)` (for tests and slow paths).
    pub fn get(&self, k: usize, n: usize) -> f32 {
        self.0.get(k, n)
    }

    /// The AMX pair tiles, when packed in them.
    pub(crate) fn tiles(&self) -> Option<&[u16]> {
        self.0.tiles()
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
        self.0.panels(k0, kc, first, count, scratch)
    }
}

/// An `M x K` matrix in the layout the micro-kernels read as their left operand: the
/// weights of a product whose right operand is gathered as it runs (convolution patches).
#[derive(Debug, Clone)]
pub struct PackedA(Panels);

impl PackedA {
    /// Packs `A[m][k] = src[m·ld + k]`: a weight stored `(out, in)` gives `W · x`.
    pub fn from_mxk<T: Element>(
        src: &[T],
        m: usize,
        k: usize,
        ld: usize,
        storage: Storage,
    ) -> Self {
        assert!(
            k == 0 || m == 0 || (m - 1) * ld + k <= src.len(),
            "A source too small"
        );
        Self(Panels::pack(k, m, MR, storage, Role::Rows, |kk, mm| {
            src[mm * ld + kk]
        }))
    }

    /// Rows of A.
    pub fn rows(&self) -> usize {
        self.0.len
    }

    /// Columns of A (the product's depth).
    pub fn depth(&self) -> usize {
        self.0.depth
    }

    /// How the values are stored.
    pub fn storage(&self) -> Storage {
        self.0.storage()
    }

    /// Bytes the packed values take.
    pub fn bytes(&self) -> usize {
        self.0.bytes()
    }

    /// A's value at `(m, k)` (for tests and slow paths).
    pub fn get(&self, m: usize, k: usize) -> f32 {
        self.0.get(k, m)
    }

    /// The AMX row tiles, when packed in them.
    pub(crate) fn tiles(&self) -> Option<&[u16]> {
        self.0.tiles()
    }

    /// Panels `first .. first + count` (each `MR x kc`, k-major, consecutive) of the block
    /// starting at column `k0`, as f32: f32 panels in place, bf16 panels widened into
    /// `scratch`.
    pub(crate) fn panels<'s>(
        &'s self,
        k0: usize,
        kc: usize,
        first: usize,
        count: usize,
        scratch: &'s mut [f32],
    ) -> &'s [f32] {
        self.0.panels(k0, kc, first, count, scratch)
    }
}

/// Packs `get(k, j)` converted by `convert` into `KC`-deep blocks of `width`-wide panels, the
/// padding past `len` zero.
fn pack_blocks<T: Element, D: Copy + Send + Sync>(
    depth: usize,
    len: usize,
    width: usize,
    get: &(impl Fn(usize, usize) -> T + Sync),
    zero: D,
    convert: impl Fn(T) -> D + Sync,
) -> Vec<D> {
    let panels = len.div_ceil(width);
    let mut data = vec![zero; depth * panels * width];
    if data.is_empty() {
        return data;
    }
    data.par_chunks_mut(KC * panels * width)
        .enumerate()
        .for_each(|(b, block)| {
            let k0 = b * KC;
            let kc = KC.min(depth - k0);
            for (p, panel) in block.chunks_exact_mut(kc * width).enumerate() {
                for j in 0..width.min(len - p * width) {
                    for kk in 0..kc {
                        panel[kk * width + j] = convert(get(k0 + kk, p * width + j));
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
