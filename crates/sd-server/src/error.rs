//! Error replies in AUTOMATIC1111's shape: `{"error", "detail", "body", "errors"}` with a 4xx
//! or 5xx status, the message naming the field or value at fault.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use stable_diffusion::Error as LibError;

/// An error reply: its status, A1111's error class name and the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The kind, as A1111's `error` key names it (`HTTPException`, `RequestValidationError`).
    pub kind: &'static str,
    /// What is wrong, naming the field or value.
    pub message: String,
}

/// Which API a request came through: its field names differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/sdapi/v1`: A1111's names.
    A1111,
    /// `/api/v1/jobs`: the library's request JSON.
    Native,
}

/// A library parameter name (as its errors say it) → the A1111 field, the native field (""
/// where that API has none).
const FIELDS: &[(&str, &str, &str)] = &[
    ("prompt", "prompt", "prompt"),
    ("negative prompt", "negative_prompt", "negative_prompt"),
    ("width", "width", "width"),
    ("height", "height", "height"),
    ("steps", "steps", "steps"),
    ("batch size", "batch_size", "batch_size"),
    ("cfg scale", "cfg_scale", "cfg_scale"),
    ("eta", "eta", "eta"),
    ("strength", "denoising_strength", "strength"),
    ("mask", "mask", "mask"),
    ("init image", "init_images", "init_image"),
    ("image", "init_images", "init_image"),
    ("refiner switch", "refiner_switch_at", "refiner_switch"),
    ("refiner", "refiner_checkpoint", "refiner"),
    (
        "clip skip",
        "override_settings.CLIP_stop_at_last_layers",
        "clip_skip",
    ),
    (
        "variation strength",
        "subseed_strength",
        "variation_strength",
    ),
    ("seed resize from", "seed_resize_from_w", "seed_resize_from"),
    ("hires scale", "hr_scale", "hires.scale"),
    ("hires resize", "hr_scale", "hires.scale"),
    ("hires upscaler", "hr_upscaler", "hires.upscaler"),
    ("hires strength", "denoising_strength", "hires.strength"),
    ("hires steps", "hr_second_pass_steps", "hires.steps"),
    ("hires fix", "", "hires"),
    ("model", "sd_model_checkpoint", "model"),
    ("VAE", "sd_vae", "vae"),
    ("sampler", "sampler_name", "sampler"),
    ("sigma schedule", "scheduler", "schedule"),
    (
        "eta noise seed delta",
        "override_settings.eta_noise_seed_delta",
        "",
    ),
    ("LoRA tag", "prompt", ""),
    ("lora", "prompt", "loras"),
];

impl Api {
    /// The field of this API's requests that the library's parameter `what` stands for.
    pub fn field_of(self, what: &str) -> Option<&'static str> {
        let &(_, a1111, native) = FIELDS.iter().find(|(name, _, _)| *name == what)?;
        let field = match self {
            Api::A1111 => a1111,
            Api::Native => native,
        };
        (!field.is_empty()).then_some(field)
    }
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    /// A request field that is malformed or out of range (422), `field` named in the message.
    pub fn field(field: &str, message: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "RequestValidationError",
            format!("field `{field}`: {message}"),
        )
    }

    /// A body that is not what the route reads (422).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "RequestValidationError",
            message,
        )
    }

    /// Something this server does not do (501).
    pub fn not_implemented(what: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplementedError",
            format!("{what} is not supported by sd serve"),
        )
    }

    /// A failure that is not the request's (500).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "RuntimeError", message)
    }

    /// A library error from running a request, naming the field of `api`'s requests that the
    /// library's parameter name stands for ("batch size" → `batch_size`).
    pub fn from_library(err: &LibError, api: Api) -> Self {
        let message = err.to_string();
        match err {
            LibError::InvalidArgument { what, .. } | LibError::Unsupported { what, .. } => {
                match api.field_of(what) {
                    Some(field) => Self::field(field, message),
                    None => Self::invalid(message),
                }
            }
            LibError::Image { .. } | LibError::Tokenizer(_) | LibError::MemoryBudget { .. } => {
                Self::invalid(message)
            }
            // A model the request names that is not there.
            LibError::NotFound { .. } => Self::new(StatusCode::NOT_FOUND, "HTTPException", message),
            LibError::Cancelled => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "HTTPException",
                "the job was cancelled",
            ),
            // The server's own files or machine: not the request's fault.
            _ => Self::internal(message),
        }
    }

    /// The reply's JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": self.kind,
            "detail": self.message,
            "body": "",
            "errors": self.message,
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_errors_name_the_a1111_field() {
        let err = LibError::invalid("batch size", "0 is not in 1..=64");
        let api = ApiError::from_library(&err, Api::A1111);
        assert_eq!(api.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            api.message,
            "field `batch_size`: invalid batch size: 0 is not in 1..=64"
        );
        let body = api.body();
        assert_eq!(body["error"], "RequestValidationError");
        assert_eq!(body["detail"], body["errors"]);
        // The same parameter under each API's own name; a name one API lacks names no field.
        let strength = LibError::invalid("strength", "2 is not in 0..=1");
        let native = ApiError::from_library(&strength, Api::Native).message;
        assert!(native.starts_with("field `strength`:"), "{native}");
        let a1111 = ApiError::from_library(&strength, Api::A1111).message;
        assert!(a1111.starts_with("field `denoising_strength`:"), "{a1111}");
        assert_eq!(Api::Native.field_of("hires scale"), Some("hires.scale"));
        assert_eq!(Api::A1111.field_of("hires fix"), None);
        assert_eq!(Api::Native.field_of("LoRA tag"), None);
        assert_eq!(Api::A1111.field_of("no such parameter"), None);
        let unnamed = ApiError::from_library(&LibError::invalid("hires fix", "x"), Api::A1111);
        assert_eq!(unnamed.message, "invalid hires fix: x");
    }

    #[test]
    fn cancelled_and_file_errors_are_not_client_errors() {
        let api = ApiError::from_library(&LibError::Cancelled, Api::A1111);
        assert_eq!(api.status, StatusCode::SERVICE_UNAVAILABLE);
        let api = ApiError::from_library(&LibError::config("x.json", "bad"), Api::Native);
        assert_eq!(api.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
