//! Half precision: weights stored in f16/bf16 stay half in memory and are converted layer by
//! layer, as each layer runs, to the compute dtype (f32 on the CPU by default).
//!
//! The split is made when the weights are read: every matrix and convolution kernel (rank >= 2)
//! is kept in the storage dtype, the text encoder's token table too (its rows are widened as
//! they are looked up; 76 MB less for SD 1.5 in bf16); vectors (biases, norms) and the small
//! position table are converted to the compute dtype once. The `nn` layers
//! convert a weight whose dtype differs from their input's for that call only, so peak memory
//! is the half weights plus one layer's converted copy.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::loading::Weights;
use crate::{Error, Result};

/// The dtype names the command line accepts.
pub const DTYPE_NAMES: &[&str] = &["f32", "f16", "bf16"];

/// Parses a dtype name (`f32`, `f16`/`fp16`/`half`, `bf16`); `what` names the option in errors.
pub fn parse_dtype(what: &'static str, name: &str) -> Result<DType> {
    match name.to_ascii_lowercase().as_str() {
        "f32" | "fp32" | "float32" => Ok(DType::F32),
        "f16" | "fp16" | "float16" | "half" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        _ => Err(Error::Unsupported {
            what,
            value: name.to_string(),
            valid: DTYPE_NAMES.iter().map(|s| s.to_string()).collect(),
        }),
    }
}

/// The short name of a dtype (`f32`, `f16`, `bf16`).
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F64 => "f64",
        _ => "f32",
    }
}

/// How a model's weights are held and computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precision {
    /// The dtype matrices and kernels are kept in.
    pub storage: DType,
    /// The dtype the layers compute in.
    pub compute: DType,
}

impl Precision {
    /// Everything in f32.
    pub const F32: Precision = Precision {
        storage: DType::F32,
        compute: DType::F32,
    };

    /// A [`VarBuilder`] over `weights` that hands out matrices and kernels in the storage dtype
    /// and everything else in the compute dtype (the builder's own dtype).
    pub fn var_builder(self, weights: Weights, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(
            Box::new(SplitPrecision {
                weights,
                storage: self.storage,
            }),
            self.compute,
            device.clone(),
        )
    }
}

/// The backend of [`Precision::var_builder`].
struct SplitPrecision {
    weights: Weights,
    storage: DType,
}

/// Whether the tensor `name` of shape `dims` is kept in the storage dtype.
fn kept_in_storage(name: &str, dims: &[usize]) -> bool {
    dims.len() >= 2 && !name.ends_with("position_embedding.weight")
}

impl SimpleBackend for SplitPrecision {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let dtype = if kept_in_storage(name, shape.dims()) {
            self.storage
        } else {
            dtype
        };
        self.weights
            .load_shaped(name, shape.dims(), dtype, device)
            .map_err(Error::into_candle)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let dims = self.weights.shape(name).unwrap_or_default();
        let dtype = if kept_in_storage(name, &dims) {
            self.storage
        } else {
            dtype
        };
        self.weights
            .load(name, dtype, device)
            .map_err(Error::into_candle)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.weights.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrices_and_the_token_table_stay_in_storage_vectors_and_positions_do_not() {
        assert!(kept_in_storage(
            "down_blocks.0.resnets.0.conv1.weight",
            &[8, 4, 3, 3]
        ));
        assert!(kept_in_storage("time_embedding.linear_1.weight", &[32, 8]));
        assert!(!kept_in_storage("down_blocks.0.resnets.0.conv1.bias", &[8]));
        assert!(kept_in_storage(
            "text_model.embeddings.token_embedding.weight",
            &[49408, 32]
        ));
        assert!(!kept_in_storage(
            "embeddings.position_embedding.weight",
            &[77, 32]
        ));
    }

    #[test]
    fn dtype_names_parse_and_unknown_ones_list_the_valid() {
        assert_eq!(parse_dtype("weight dtype", "fp16").unwrap(), DType::F16);
        assert_eq!(parse_dtype("weight dtype", "BF16").unwrap(), DType::BF16);
        let err = parse_dtype("weight dtype", "f8").unwrap_err().to_string();
        assert!(err.contains("bf16"), "{err}");
    }
}
