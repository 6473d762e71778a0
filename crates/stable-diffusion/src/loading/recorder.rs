//! A weight source that hands out shape-only tensors and records what a model asked for.
//! It lets tests build full-size models (SDXL's UNet is 10 GB in f32) without any memory,
//! and check their tensor names and shapes against the real checkpoints' manifests.

use std::collections::BTreeMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::Result;

#[derive(Default)]
struct ShapeRecorder {
    seen: Mutex<BTreeMap<String, Vec<usize>>>,
}

impl SimpleBackend for ShapeRecorder {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut seen = self.seen.lock().expect("recorder lock poisoned");
        if let Some(previous) = seen.get(name) {
            if previous.as_slice() != shape.dims() {
                candle_core::bail!(
                    "tensor {name} requested twice with shapes {previous:?} and {:?}",
                    shape.dims()
                );
            }
        }
        seen.insert(name.to_string(), shape.dims().to_vec());
        // A single zero broadcast to the shape: no memory, whatever the size.
        Tensor::zeros((), dtype, device)?.broadcast_as(shape)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("shape recorder: tensor {name} requested without a shape")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// Builds a model with `build` from shape-only weights and returns every tensor name it asked
/// for, with the shape it asked for. Nothing is allocated beyond one scalar per tensor.
pub fn record_shapes<T>(
    build: impl FnOnce(VarBuilder) -> Result<T>,
) -> Result<BTreeMap<String, Vec<usize>>> {
    let recorder = std::sync::Arc::new(ShapeRecorder::default());
    let vb = VarBuilder::from_backend(
        Box::new(SharedRecorder(recorder.clone())),
        DType::F32,
        Device::Cpu,
    );
    build(vb)?;
    let seen = recorder
        .seen
        .lock()
        .expect("recorder lock poisoned")
        .clone();
    Ok(seen)
}

struct SharedRecorder(std::sync::Arc<ShapeRecorder>);

impl SimpleBackend for SharedRecorder {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.get(shape, name, init, dtype, device)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.get_unchecked(name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_tensor(name)
    }
}
