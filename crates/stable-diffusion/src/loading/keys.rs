//! Renaming of requested tensor names: one model code path (diffusers' names) serves several
//! key layouts on disk.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// One place a requested tensor may be read from: a stored tensor, or part of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The stored tensor's name.
    pub name: String,
    /// Take only these rows (first dimension) of the stored tensor: one part of a fused
    /// weight, such as q, k or v out of OpenCLIP's `in_proj_weight`.
    pub rows: Option<Range<usize>>,
    /// Reshape the stored tensor to the requested shape when the element counts agree (1x1
    /// convolution weights stored for linear layers, or the reverse).
    pub reshape: bool,
    /// Transpose the stored 2-D tensor (after taking `rows`): OpenCLIP's `text_projection`
    /// is stored `(hidden, projection)` for `x @ P`, a linear layer wants `(projection, hidden)`.
    pub transpose: bool,
}

impl Source {
    /// The whole stored tensor `name`, as is.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            rows: None,
            reshape: false,
            transpose: false,
        }
    }

    /// Only `rows` of the first dimension.
    pub fn rows(mut self, rows: Range<usize>) -> Self {
        self.rows = Some(rows);
        self
    }

    /// Reshaped to the requested shape (same number of elements).
    pub fn reshaped(mut self) -> Self {
        self.reshape = true;
        self
    }

    /// Transposed (a 2-D stored tensor only).
    pub fn transposed(mut self) -> Self {
        self.transpose = true;
        self
    }
}

/// The candidate function inside a [`KeyMap`].
type SourcesFn = dyn Fn(&str) -> Vec<Source> + Send + Sync;

/// Maps a tensor name the model asks for to the stored tensors to try, in order.
///
/// The requested name itself is always tried first; the map adds further candidates (the same
/// tensor with or without a prefix, or its name in a foreign layout such as an LDM checkpoint,
/// possibly a slice of a fused tensor).
#[derive(Clone)]
pub struct KeyMap {
    sources: Arc<SourcesFn>,
}

impl KeyMap {
    /// Tries only the requested name.
    pub fn identity() -> Self {
        Self::from_sources_fn(|_| Vec::new())
    }

    /// Tries the requested name, then the stored names `candidates` returns for it.
    pub fn from_fn(candidates: impl Fn(&str) -> Vec<String> + Send + Sync + 'static) -> Self {
        Self::from_sources_fn(move |name| candidates(name).into_iter().map(Source::new).collect())
    }

    /// Tries the requested name, then the [`Source`]s `sources` returns for it.
    pub fn from_sources_fn(sources: impl Fn(&str) -> Vec<Source> + Send + Sync + 'static) -> Self {
        Self {
            sources: Arc::new(sources),
        }
    }

    /// Tries the requested name, then the same name with `prefix` added or, if it has it,
    /// removed: `optional_prefix("text_model.")` lets `embeddings.x` and
    /// `text_model.embeddings.x` load from either layout.
    pub fn optional_prefix(prefix: &str) -> Self {
        let prefix = prefix.to_string();
        Self::from_fn(move |name| match name.strip_prefix(prefix.as_str()) {
            Some(rest) => vec![rest.to_string()],
            None => vec![format!("{prefix}{name}")],
        })
    }

    /// Tries this map's candidates, then `other`'s (each given the requested name).
    pub fn then(self, other: KeyMap) -> Self {
        Self::from_sources_fn(move |name| {
            let mut sources = (self.sources)(name);
            sources.extend((other.sources)(name));
            sources
        })
    }

    /// Every source to try for `name`, in order, starting with `name` itself, without repeats.
    pub fn sources(&self, name: &str) -> Vec<Source> {
        let mut sources = vec![Source::new(name)];
        for source in (self.sources)(name) {
            if !sources.contains(&source) {
                sources.push(source);
            }
        }
        sources
    }

    /// The stored names [`KeyMap::sources`] tries for `name`, in order.
    pub fn candidates(&self, name: &str) -> Vec<String> {
        self.sources(name).into_iter().map(|s| s.name).collect()
    }
}

impl Default for KeyMap {
    fn default() -> Self {
        Self::identity()
    }
}

impl fmt::Debug for KeyMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyMap(..)")
    }
}

/// The key map that lets a model of `class_name` (a diffusers/transformers class name from
/// `model_index.json`) load every key layout its libraries write.
///
/// transformers 5.x writes `CLIPTextModel` without the `text_model.` prefix, 4.x (every
/// published SD checkpoint) with it; `CLIPTextModelWithProjection` always has it.
pub fn key_map_for_class(class_name: &str) -> KeyMap {
    match class_name {
        "CLIPTextModel" | "CLIPTextModelWithProjection" => KeyMap::optional_prefix("text_model."),
        _ => KeyMap::identity(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_prefix_adds_or_strips_the_prefix() {
        let map = KeyMap::optional_prefix("text_model.");
        assert_eq!(map.candidates("a.b"), vec!["a.b", "text_model.a.b"]);
        assert_eq!(
            map.candidates("text_model.a.b"),
            vec!["text_model.a.b", "a.b"]
        );
    }

    #[test]
    fn then_chains_candidates_without_repeats() {
        let map = KeyMap::from_fn(|n| vec![format!("x.{n}")]).then(KeyMap::from_fn(|n| {
            vec![format!("x.{n}"), format!("y.{n}")]
        }));
        assert_eq!(map.candidates("w"), vec!["w", "x.w", "y.w"]);
    }
}
