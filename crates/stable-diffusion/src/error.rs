//! The library's one error type. Every message names the file, tensor, key or value at fault.

use std::path::PathBuf;

/// Everything that can go wrong in the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },

    /// A file or folder that should exist does not.
    #[error("{what} not found: {}", path.display())]
    NotFound {
        /// What was looked for ("model folder", "config file", ...).
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },

    /// A safetensors file whose header or data is not valid.
    #[error("{}: not a valid safetensors file: {msg}", path.display())]
    Safetensors {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },

    /// A checkpoint (`.ckpt` / single-file model) that cannot be read or understood.
    #[error("{}: cannot load checkpoint: {msg}", path.display())]
    Checkpoint {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },

    /// A configuration file (or value) that cannot be used.
    #[error("{}invalid config: {msg}", if path.as_os_str().is_empty() { String::new() } else { format!("{}: ", path.display()) })]
    Config {
        /// The config file at fault (empty for in-memory configs).
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },

    /// A tensor the model needs is missing from its weights.
    #[error("tensor `{name}` not found in {location}")]
    MissingTensor {
        /// The full (diffusers) name of the tensor.
        name: String,
        /// The file(s) searched.
        location: String,
    },

    /// A tensor exists but has the wrong shape.
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The full name of the tensor.
        name: String,
        /// The shape the model config asks for.
        expected: Vec<usize>,
        /// The shape found in the file.
        found: Vec<usize>,
    },

    /// A value (activation, layout, dtype, model type, sampler, ...) this library does not support.
    #[error("unsupported {what} `{value}`{}", if valid.is_empty() { String::new() } else { format!(" (valid: {})", valid.join(", ")) })]
    Unsupported {
        /// The kind of value ("activation function", "sampler", ...).
        what: &'static str,
        /// The value found.
        value: String,
        /// The values that would have been accepted, if a closed set.
        valid: Vec<String>,
    },

    /// A request parameter that is out of range or inconsistent.
    #[error("invalid {what}: {msg}")]
    InvalidArgument {
        /// The parameter at fault ("width", "strength", ...).
        what: &'static str,
        /// What is wrong with it.
        msg: String,
    },

    /// The tokenizer vocabulary or a prompt could not be processed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// An image could not be decoded, encoded or converted.
    #[error("image {}: {msg}", path.display())]
    Image {
        /// The image file involved (empty for in-memory images).
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },

    /// A model or a request that needs more memory than the run may use (estimated before
    /// anything is allocated; see [`crate::pipeline::memory`]).
    #[error(
        "not enough memory: {what} needs about {}, {}",
        crate::pipeline::memory::format_bytes(*needed),
        if *limit_given {
            format!("more than the limit of {} (--max-memory)", crate::pipeline::memory::format_bytes(*allowed))
        } else {
            format!("{} are available", crate::pipeline::memory::format_bytes(*allowed))
        }
    )]
    MemoryBudget {
        /// What needs the memory ("the model's weights (f32)", "a 4096x4096 image").
        what: String,
        /// The bytes needed (with what is already loaded, when a limit was given).
        needed: u64,
        /// The bytes allowed: the limit, or what the machine had available.
        allowed: u64,
        /// Whether `allowed` is a limit the caller gave (else the machine's available memory).
        limit_given: bool,
    },

    /// The run was cancelled by the caller (for example Ctrl-C).
    #[error("cancelled")]
    Cancelled,

    /// An error from the tensor library.
    #[error(transparent)]
    Candle(candle_core::Error),
}

impl From<candle_core::Error> for Error {
    /// Unwraps our own errors that travelled through candle (for example from a weight backend),
    /// and turns candle's missing-tensor and shape errors into ours, so callers see one kind.
    fn from(err: candle_core::Error) -> Self {
        match err {
            candle_core::Error::WrappedContext { wrapped, context } => {
                match wrapped.downcast::<Error>() {
                    Ok(ours) => *ours,
                    Err(other) => Error::Candle(candle_core::Error::WrappedContext {
                        wrapped: other,
                        context,
                    }),
                }
            }
            candle_core::Error::WithBacktrace { inner, .. } => Error::from(*inner),
            candle_core::Error::CannotFindTensor { path } => Error::MissingTensor {
                name: path,
                location: "the model weights".to_string(),
            },
            candle_core::Error::UnexpectedShape { msg, expected, got }
                if msg.starts_with("shape mismatch for ") =>
            {
                Error::ShapeMismatch {
                    name: msg["shape mismatch for ".len()..].to_string(),
                    expected: expected.dims().to_vec(),
                    found: got.dims().to_vec(),
                }
            }
            other => Error::Candle(other),
        }
    }
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// An invalid config at `path`.
    pub fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// An invalid request parameter.
    pub fn invalid(what: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument {
            what,
            msg: msg.into(),
        }
    }

    /// Wraps this error so it can travel through candle APIs and come back out unchanged.
    pub fn into_candle(self) -> candle_core::Error {
        candle_core::Error::WrappedContext {
            wrapped: Box::new(self),
            context: String::new(),
        }
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
