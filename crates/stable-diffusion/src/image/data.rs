//! An encoded image carried in a request: the bytes of a PNG, JPEG or WebP file, written in
//! JSON as base64 (a `data:image/...;base64,` URI is accepted too, as A1111's API sends).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::RgbImage;
use crate::{Error, Result};

/// The bytes of an image file, decoded only when a request runs.
#[derive(Clone, PartialEq, Eq)]
pub struct ImageData(pub Vec<u8>);

impl ImageData {
    /// Reads an image file's bytes as they are (nothing is decoded yet).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        std::fs::read(path).map(Self).map_err(|e| Error::Image {
            path: path.to_path_buf(),
            msg: format!("cannot read: {e}"),
        })
    }

    /// Parses base64 text, with or without a `data:...;base64,` prefix.
    pub fn from_base64(text: &str) -> Result<Self> {
        let text = text.trim();
        let body = match text.strip_prefix("data:") {
            Some(uri) => match uri.split_once(',') {
                Some((header, body)) if header.ends_with(";base64") => body,
                _ => {
                    return Err(Error::invalid(
                        "image",
                        "a data: URI must be `data:<type>;base64,<data>`",
                    ))
                }
            },
            None => text,
        };
        let body: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .map(Self)
            .map_err(|e| Error::invalid("image", format!("not base64: {e}")))
    }

    /// The bytes as base64 text (no `data:` prefix).
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.0)
    }

    /// Decodes the image to 8-bit RGB; `what` names it in errors ("init image", "mask").
    pub fn decode(&self, what: &str) -> Result<RgbImage> {
        super::decode_image(&self.0).map_err(|msg| Error::Image {
            path: PathBuf::from(format!("<{what}>")),
            msg,
        })
    }
}

impl std::fmt::Debug for ImageData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ImageData({} bytes)", self.0.len())
    }
}

impl Serialize for ImageData {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl schemars::JsonSchema for ImageData {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ImageData".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "contentEncoding": "base64",
            "description": "An image file (PNG, JPEG or WebP) in base64, or a `data:image/...;base64,` URI."
        })
    }
}

impl<'de> Deserialize<'de> for ImageData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::from_base64(&text).map_err(serde::de::Error::custom)
    }
}
