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

    /// A library error from running a request, with the A1111 field that `field_of` gives for
    /// the library's parameter names ("batch size" → `batch_size`).
    pub fn from_library(err: &LibError, field_of: impl Fn(&str) -> Option<&'static str>) -> Self {
        let message = err.to_string();
        match err {
            LibError::InvalidArgument { what, .. } | LibError::Unsupported { what, .. } => {
                match field_of(what) {
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
        let api =
            ApiError::from_library(&err, |what| (what == "batch size").then_some("batch_size"));
        assert_eq!(api.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            api.message,
            "field `batch_size`: invalid batch size: 0 is not in 1..=64"
        );
        let body = api.body();
        assert_eq!(body["error"], "RequestValidationError");
        assert_eq!(body["detail"], body["errors"]);
    }

    #[test]
    fn cancelled_and_file_errors_are_not_client_errors() {
        let api = ApiError::from_library(&LibError::Cancelled, |_| None);
        assert_eq!(api.status, StatusCode::SERVICE_UNAVAILABLE);
        let api = ApiError::from_library(&LibError::config("x.json", "bad"), |_| None);
        assert_eq!(api.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
