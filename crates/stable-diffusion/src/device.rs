//! Choosing where and in which precision models run: device names (`cpu`, `cuda[:N]`,
//! `metal[:N]`, `auto`) and compute dtype names (`f32`, `f16`, `bf16`), as the CLI and the
//! library's users write them.
//!
//! CUDA and Metal exist only in builds with the `cuda` / `metal` cargo features; naming one in
//! another build is an error that says which feature to enable.

use candle_core::{DType, Device};

use crate::{Error, Result};

/// The device names [`parse_device`] accepts, for messages and help texts.
pub const DEVICE_NAMES: &str = "cpu, cuda, cuda:N, metal, metal:N, auto";

/// Whether this build can run on CUDA GPUs (built with the `cuda` feature).
pub fn cuda_compiled() -> bool {
    cfg!(feature = "cuda")
}

/// Whether this build can run on Apple GPUs (built with the `metal` feature).
pub fn metal_compiled() -> bool {
    cfg!(feature = "metal")
}

/// Parses a device name and opens that device: `cpu`; `cuda` or `cuda:N` (GPU number N,
/// default 0); `metal` or `metal:N`; `auto` (the first of cuda:0, metal:0 that this build
/// has and that opens, else the CPU). Case and surrounding spaces are ignored.
pub fn parse_device(spec: &str) -> Result<Device> {
    let name = spec.trim().to_ascii_lowercase();
    let (kind, ordinal) = match name.split_once(':') {
        Some((kind, number)) => {
            let ordinal = number.parse::<usize>().map_err(|_| {
                Error::invalid(
                    "device",
                    format!("`{spec}`: the part after ':' must be a GPU number (0, 1, ...)"),
                )
            })?;
            (kind, Some(ordinal))
        }
        None => (name.as_str(), None),
    };
    match (kind, ordinal) {
        ("cpu", None) => Ok(Device::Cpu),
        ("cuda", ordinal) => open_cuda(spec, ordinal.unwrap_or(0)),
        ("metal", ordinal) => open_metal(spec, ordinal.unwrap_or(0)),
        ("auto", None) => Ok(auto_device()),
        _ => Err(Error::Unsupported {
            what: "device",
            value: spec.to_string(),
            valid: DEVICE_NAMES.split(", ").map(String::from).collect(),
        }),
    }
}

/// The best device this build and machine offer: cuda:0, then metal:0, then the CPU.
pub fn auto_device() -> Device {
    if cuda_compiled() {
        if let Ok(device) = Device::new_cuda(0) {
            return device;
        }
    }
    if metal_compiled() {
        if let Ok(device) = Device::new_metal(0) {
            return device;
        }
    }
    Device::Cpu
}

fn open_cuda(spec: &str, ordinal: usize) -> Result<Device> {
    if !cuda_compiled() {
        return Err(Error::invalid(
            "device",
            format!("`{spec}`: this build has no CUDA support (rebuild with `--features cuda`)"),
        ));
    }
    Device::new_cuda(ordinal)
        .map_err(|err| Error::invalid("device", format!("cannot open cuda:{ordinal}: {err}")))
}

fn open_metal(spec: &str, ordinal: usize) -> Result<Device> {
    if !metal_compiled() {
        return Err(Error::invalid(
            "device",
            format!("`{spec}`: this build has no Metal support (rebuild with `--features metal`)"),
        ));
    }
    Device::new_metal(ordinal)
        .map_err(|err| Error::invalid("device", format!("cannot open metal:{ordinal}: {err}")))
}

/// A device's name in the form [`parse_device`] reads: `cpu`, `cuda:N` or `metal:N`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Parses a compute dtype name: `f32` (alias `fp32`, `float32`), `f16` (`fp16`, `float16`,
/// `half`) or `bf16` (`bfloat16`). Half precision is meant for GPUs; on the CPU it is slow.
pub fn parse_dtype(spec: &str) -> Result<DType> {
    match spec.trim().to_ascii_lowercase().as_str() {
        "f32" | "fp32" | "float32" => Ok(DType::F32),
        "f16" | "fp16" | "float16" | "half" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        _ => Err(Error::Unsupported {
            what: "dtype",
            value: spec.to_string(),
            valid: vec!["f32".into(), "f16".into(), "bf16".into()],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses_in_any_case_with_spaces() {
        for spec in ["cpu", "CPU", " cpu "] {
            assert!(parse_device(spec).unwrap().is_cpu(), "{spec}");
        }
    }

    #[test]
    fn unknown_device_lists_the_valid_names() {
        let message = parse_device("gpu").unwrap_err().to_string();
        assert!(message.contains("`gpu`"), "{message}");
        assert!(message.contains("cuda:N"), "{message}");
        assert!(parse_device("cpu:0").is_err());
        assert!(parse_device("auto:1").is_err());
    }

    #[test]
    fn bad_gpu_number_is_an_error_naming_the_spec() {
        let message = parse_device("cuda:x").unwrap_err().to_string();
        assert!(message.contains("`cuda:x`"), "{message}");
        assert!(message.contains("GPU number"), "{message}");
    }

    #[test]
    fn gpu_without_its_feature_names_the_feature() {
        if !cuda_compiled() {
            let message = parse_device("cuda").unwrap_err().to_string();
            assert!(message.contains("--features cuda"), "{message}");
        }
        if !metal_compiled() {
            let message = parse_device("metal:1").unwrap_err().to_string();
            assert!(message.contains("--features metal"), "{message}");
        }
    }

    #[test]
    fn auto_falls_back_to_the_cpu_without_gpu_features() {
        let device = parse_device("auto").unwrap();
        if !cuda_compiled() && !metal_compiled() {
            assert!(device.is_cpu());
        }
        assert_eq!(
            device_name(&device),
            device_name(&parse_device(&device_name(&device)).unwrap())
        );
    }

    #[test]
    fn dtype_names_and_aliases_parse() {
        assert_eq!(parse_dtype("f32").unwrap(), DType::F32);
        assert_eq!(parse_dtype("FP16").unwrap(), DType::F16);
        assert_eq!(parse_dtype("half").unwrap(), DType::F16);
        assert_eq!(parse_dtype("bf16").unwrap(), DType::BF16);
        let message = parse_dtype("f64").unwrap_err().to_string();
        assert!(
            message.contains("`f64`") && message.contains("bf16"),
            "{message}"
        );
    }
}
