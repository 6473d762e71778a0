//! The adapter between candle tensors and the CPU kernel layer (`sd-kernels`).
//!
//! Weights of layers that run on the CPU are packed once, when the model is built, into the
//! kernels' layout (f32, or bf16 when they are stored in bf16); the candle copy is dropped.
//! Layers on a GPU, trainable weights (candle `Var`s, which change under the optimizer) and
//! `SD_CPU_KERNELS=candle` keep candle's ops.

use candle_core::{DType, Device, Shape, Storage, Tensor};
use sd_kernels::gemm::{PackedA, PackedB, Storage as Packing};

use crate::{Error, Result};

/// The `SD_CPU_KERNELS` value that turns the kernel layer off (candle's ops run instead).
pub const CANDLE: &str = "candle";

/// Whether the kernel layer is on (`SD_CPU_KERNELS` is not `candle`).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var(sd_kernels::cpu::ENV_VAR)
            .map(|v| !v.trim().eq_ignore_ascii_case(CANDLE))
            .unwrap_or(true)
    })
}

/// Checks `SD_CPU_KERNELS`: an unknown level, or one this CPU cannot run, is an error.
pub fn check_level() -> Result<()> {
    if !enabled() {
        return Ok(());
    }
    sd_kernels::cpu::process_level()
        .map(|_| ())
        .map_err(|e| Error::InvalidArgument {
            what: "CPU kernel level",
            msg: format!("{e}; `{CANDLE}` turns the kernels off"),
        })
}

/// What runs the heavy ops on the CPU: a kernel level (`avx2`, `generic`, ...) or `candle`.
pub fn cpu_backend_name() -> String {
    if enabled() {
        sd_kernels::cpu::level().name().to_string()
    } else {
        CANDLE.to_string()
    }
}

/// Whether a weight should be packed for the kernels: the layer is on, the weight is on the
/// CPU, holds its own values (not a broadcast placeholder such as the shape recorder's) and
/// is not trainable, and the model is not being built for training (whose passes need
/// candle's gradients and whose results must not change with the kernels).
pub(crate) fn packs(weight: &Tensor) -> bool {
    enabled()
        && weight.device().is_cpu()
        && weight.is_contiguous()
        && !weight.is_variable()
        && !super::differentiable()
}

/// Calls `f` with the values of a contiguous CPU tensor of element type `T`.
fn with_slice<T: candle_core::WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(internal("a kernel input is not on the CPU"));
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Err(internal("a kernel input is not contiguous"));
    };
    let data = cpu.as_slice::<T>()?;
    Ok(f(&data[start..end]))
}

/// Calls `f` with the values of `t` as contiguous f32 (converted or copied only when needed).
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    if t.dtype() == DType::F32 && t.is_contiguous() {
        return with_slice(t, f);
    }
    if t.dtype() == DType::BF16 && t.is_contiguous() && t.device().is_cpu() {
        let wide = with_slice(t, |d: &[half::bf16]| {
            sd_kernels::convert::widen_bf16(bf16_bits(d))
        })?;
        return Ok(f(&wide));
    }
    let t = t.to_dtype(DType::F32)?.contiguous()?;
    with_slice(&t, f)
}

/// A CPU tensor of `shape` owning `data`.
pub(crate) fn tensor(data: Vec<f32>, shape: impl Into<Shape>) -> Result<Tensor> {
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

/// The storage a weight of `dtype` is packed in: bf16 stays bf16, the rest becomes f32.
fn packing(dtype: DType) -> Packing {
    if dtype == DType::BF16 {
        Packing::Bf16
    } else {
        Packing::F32
    }
}

/// A weight's values in one of the element types the kernels pack from.
enum Values<'a> {
    F32(&'a [f32]),
    Bf16(&'a [half::bf16]),
    F16(&'a [half::f16]),
}

/// Calls `f` with a weight's values and the storage to pack them in (other dtypes are
/// converted to f32 first).
fn with_values<R>(weight: &Tensor, f: impl FnOnce(Values, Packing) -> R) -> Result<R> {
    let weight = weight.contiguous()?;
    let storage = packing(weight.dtype());
    match weight.dtype() {
        DType::F32 => with_slice(&weight, |d| f(Values::F32(d), storage)),
        DType::BF16 => with_slice(&weight, |d| f(Values::Bf16(d), storage)),
        DType::F16 => with_slice(&weight, |d| f(Values::F16(d), storage)),
        other => {
            let weight = weight
                .to_dtype(DType::F32)
                .map_err(|_| unsupported(other))?;
            with_slice(&weight, |d| f(Values::F32(d), storage))
        }
    }
}

/// Packs a weight `(n, k)` (rows are outputs) as the `k x n` right operand of `x · Wᵀ`.
pub(crate) fn pack_transposed(weight: &Tensor, k: usize, n: usize) -> Result<PackedB> {
    with_values(weight, |values, storage| match values {
        Values::F32(d) => PackedB::from_nxk(d, k, n, k, storage),
        Values::Bf16(d) => PackedB::from_nxk(d, k, n, k, storage),
        Values::F16(d) => PackedB::from_nxk(d, k, n, k, storage),
    })
}

/// Packs a weight `(m, k)` (rows are outputs) as the `m x k` left operand of `W · x`.
pub(crate) fn pack_rows(weight: &Tensor, m: usize, k: usize) -> Result<PackedA> {
    with_values(weight, |values, storage| match values {
        Values::F32(d) => PackedA::from_mxk(d, m, k, k, storage),
        Values::Bf16(d) => PackedA::from_mxk(d, m, k, k, storage),
        Values::F16(d) => PackedA::from_mxk(d, m, k, k, storage),
    })
}

/// Reads a vector (bias, norm weights) as f32.
pub(crate) fn vector(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

fn unsupported(dtype: DType) -> Error {
    Error::InvalidArgument {
        what: "weight dtype",
        msg: format!("weights of dtype {dtype:?} cannot be packed for the CPU kernels"),
    }
}

fn internal(msg: &str) -> Error {
    Error::InvalidArgument {
        what: "kernel input",
        msg: msg.to_string(),
    }
}

/// Whether `x` runs through the kernels: the layer is on, `x` is on the CPU and the pass is
/// not differentiable (candle's ops keep the gradients there).
pub(crate) fn runs(x: &Tensor) -> bool {
    enabled() && x.device().is_cpu() && !super::differentiable()
}

/// A new tensor shaped like `like`, in its dtype, from `f` changing a copy of its values.
pub(crate) fn map_copy(like: &Tensor, f: impl FnOnce(&mut [f32])) -> Result<Tensor> {
    let mut data = with_f32(like, |x| x.to_vec())?;
    f(&mut data);
    in_dtype_of(like, tensor(data, like.shape().clone())?)
}

/// A new tensor of `shape` in `like`'s dtype, from `f` writing every value of a buffer.
pub(crate) fn fill(
    like: &Tensor,
    shape: impl Into<Shape>,
    f: impl FnOnce(&mut [f32]) -> Result<()>,
) -> Result<Tensor> {
    let shape = shape.into();
    let mut data = vec![0f32; shape.elem_count()];
    f(&mut data)?;
    in_dtype_of(like, tensor(data, shape)?)
}

/// `out` converted to `like`'s dtype (free when they agree).
pub(crate) fn in_dtype_of(like: &Tensor, out: Tensor) -> Result<Tensor> {
    if out.dtype() == like.dtype() {
        return Ok(out);
    }
    if out.dtype() == DType::F32
        && like.dtype() == DType::BF16
        && out.is_contiguous()
        && out.device().is_cpu()
    {
        let narrow =
            std::mem::ManuallyDrop::new(with_slice(&out, sd_kernels::convert::narrow_to_bf16)?);
        // SAFETY: `bf16` is a `repr(transparent)` wrapper of `u16`: same size and alignment,
        // so the allocation is the same; `narrow` is not dropped.
        let values: Vec<half::bf16> = unsafe {
            Vec::from_raw_parts(
                narrow.as_ptr() as *mut half::bf16,
                narrow.len(),
                narrow.capacity(),
            )
        };
        return Ok(Tensor::from_vec(values, out.shape().clone(), out.device())?);
    }
    Ok(out.to_dtype(like.dtype())?)
}

/// bf16 values as their bits.
fn bf16_bits(values: &[half::bf16]) -> &[u16] {
    // SAFETY: `bf16` is a `repr(transparent)` wrapper of `u16`.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast(), values.len()) }
}
