//! Renaming of requested tensor names: one model code path (diffusers' names) serves several
//! key layouts on disk.

use std::fmt;
use std::sync::Arc;

/// The candidate function inside a [`KeyMap`].
type CandidatesFn = dyn Fn(&str) -> Vec<String> + Send + Sync;

/// Maps a tensor name the model asks for to the names to try in the files, in order.
///
/// The requested name itself is always tried first; the map adds further candidates (the same
/// tensor with or without a prefix, or its name in a foreign layout such as an LDM checkpoint).
#[derive(Clone)]
pub struct KeyMap {
    candidates: Arc<CandidatesFn>,
}

impl KeyMap {
    /// Tries only the requested name.
    pub fn identity() -> Self {
        Self::from_fn(|_| Vec::new())
    }

    /// Tries the requested name, then whatever `candidates` returns for it.
    pub fn from_fn(candidates: impl Fn(&str) -> Vec<String> + Send + Sync + 'static) -> Self {
        Self {
            candidates: Arc::new(candidates),
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
        Self::from_fn(move |name| {
            let mut names = (self.candidates)(name);
            names.extend((other.candidates)(name));
            names
        })
    }

    /// Every name to try for `name`, in order, starting with `name` itself, without repeats.
    pub fn candidates(&self, name: &str) -> Vec<String> {
        let mut names = vec![name.to_string()];
        for candidate in (self.candidates)(name) {
            if !names.contains(&candidate) {
                names.push(candidate);
            }
        }
        names
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
