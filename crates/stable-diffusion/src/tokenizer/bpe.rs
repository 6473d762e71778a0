//! Byte-level byte-pair encoding: the byte → character table, the vocabulary with its ranked
//! merges, and the merge loop that turns one pre-tokenized word into token ids.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

use crate::{Error, Result};

/// The suffix that marks the last symbol of a word in CLIP's vocabulary.
pub const END_OF_WORD: &str = "</w>";

/// How many distinct words the merge cache remembers before it stops growing.
const CACHE_CAPACITY: usize = 10_000;

/// GPT-2's reversible map from the 256 byte values to printable characters, so that every byte
/// string becomes a string of visible characters. The printable Latin-1 bytes map to themselves;
/// the others (controls, space, a few Latin-1 gaps) map, in byte order, to U+0100 onwards.
/// Returned in CLIP's vocabulary order: the printable bytes first, then the remapped ones.
pub fn byte_chars_in_vocab_order() -> Vec<(u8, char)> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table: Vec<(u8, char)> = (0..=255u8)
        .filter(|&b| printable(b))
        .map(|b| (b, char::from(b)))
        .collect();
    let remapped = (0..=255u8).filter(|&b| !printable(b));
    for (code, b) in (256u32..).zip(remapped) {
        // 256..=323 are all valid scalar values.
        table.push((
            b,
            char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER),
        ));
    }
    table
}

/// The byte → character table indexed by byte value.
pub fn byte_to_char() -> &'static [char; 256] {
    static TABLE: OnceLock<[char; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = ['\0'; 256];
        for (b, c) in byte_chars_in_vocab_order() {
            table[b as usize] = c;
        }
        table
    })
}

/// The inverse of [`byte_to_char`]: the byte a vocabulary character stands for.
pub fn char_to_byte(c: char) -> Option<u8> {
    static TABLE: OnceLock<HashMap<char, u8>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            byte_chars_in_vocab_order()
                .into_iter()
                .map(|(b, c)| (c, b))
                .collect()
        })
        .get(&c)
        .copied()
}

/// A BPE vocabulary: tokens, ids, ranked merges, and a cache of words already encoded.
/// Immutable once built apart from the cache, which is behind a lock so one model can be shared
/// by many threads.
#[derive(Debug)]
pub struct BpeModel {
    /// Token string (byte-level characters, maybe ending in `</w>`) → id.
    token_to_id: HashMap<String, u32>,
    /// Id → token string; `None` for ids the vocabulary skips.
    id_to_token: Vec<Option<String>>,
    /// (left id, right id) → (rank, merged id). Lower rank merges first.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Per byte: the id of its character, alone and with `</w>` (None if absent).
    byte_ids: [Option<u32>; 256],
    /// Per byte: the id of its character followed by `</w>`.
    byte_end_ids: [Option<u32>; 256],
    /// The id used for a byte whose character is missing from the vocabulary.
    unk_id: Option<u32>,
    /// Words already encoded (keyed by their raw bytes) → ids.
    cache: RwLock<HashMap<Vec<u8>, Vec<u32>>>,
}

impl BpeModel {
    /// Builds a model from a token → id map and merges in rank order (each a pair of tokens).
    /// `source` names where they came from, for error messages. Every merge's two halves and
    /// their concatenation must be tokens of the vocabulary.
    pub fn new(
        token_to_id: HashMap<String, u32>,
        merges: &[(String, String)],
        unk_token: Option<&str>,
        source: &str,
    ) -> Result<Self> {
        let size = token_to_id
            .values()
            .map(|&id| id as usize + 1)
            .max()
            .unwrap_or(0);
        let mut id_to_token = vec![None; size];
        for (token, &id) in &token_to_id {
            if let Some(previous) = &id_to_token[id as usize] {
                return Err(Error::Tokenizer(format!(
                    "{source}: tokens `{previous}` and `{token}` share the id {id}"
                )));
            }
            id_to_token[id as usize] = Some(token.clone());
        }
        let lookup = |token: &str, line: usize| {
            token_to_id.get(token).copied().ok_or_else(|| {
                Error::Tokenizer(format!(
                    "{source}: merge {line} uses `{token}`, which is not in the vocabulary"
                ))
            })
        };
        let mut merge_map = HashMap::with_capacity(merges.len());
        for (rank, (left, right)) in merges.iter().enumerate() {
            let pair = (lookup(left, rank + 1)?, lookup(right, rank + 1)?);
            let merged = lookup(&format!("{left}{right}"), rank + 1)?;
            // A repeated merge keeps its first (lowest) rank.
            merge_map.entry(pair).or_insert((rank as u32, merged));
        }
        let mut byte_ids = [None; 256];
        let mut byte_end_ids = [None; 256];
        for (b, &c) in byte_to_char().iter().enumerate() {
            byte_ids[b] = token_to_id.get(c.to_string().as_str()).copied();
            byte_end_ids[b] = token_to_id
                .get(format!("{c}{END_OF_WORD}").as_str())
                .copied();
        }
        let unk_id = unk_token.and_then(|t| token_to_id.get(t).copied());
        Ok(BpeModel {
            token_to_id,
            id_to_token,
            merges: merge_map,
            byte_ids,
            byte_end_ids,
            unk_id,
            cache: RwLock::new(HashMap::new()),
        })
    }

    /// The number of ids (one past the largest).
    pub fn len(&self) -> usize {
        self.id_to_token.len()
    }

    /// Whether the vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.id_to_token.is_empty()
    }

    /// The number of merges.
    pub fn merge_count(&self) -> usize {
        self.merges.len()
    }

    /// The id of a vocabulary token (in byte-level characters, e.g. `cat</w>`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.token_to_id.get(token).copied()
    }

    /// The vocabulary token of an id.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.id_to_token.get(id as usize)?.as_deref()
    }

    /// Encodes one pre-tokenized word (its UTF-8 bytes; the word is not split further) into ids,
    /// appending them to `out`. Uses and fills the shared cache.
    pub fn encode_word(&self, word: &[u8], out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if let Ok(cache) = self.cache.read() {
            if let Some(ids) = cache.get(word) {
                out.extend_from_slice(ids);
                return;
            }
        }
        let ids = self.merge_word(word);
        out.extend_from_slice(&ids);
        if let Ok(mut cache) = self.cache.write() {
            if cache.len() < CACHE_CAPACITY {
                cache.insert(word.to_vec(), ids);
            }
        }
    }

    /// The BPE merge loop without the cache: start from one symbol per byte (the last one carries
    /// `</w>`), then repeatedly merge the leftmost pair with the lowest rank until no pair of
    /// neighbours has a merge. The candidate pairs wait in a heap ordered by (rank, position),
    /// so a word of n bytes takes O(n log n), not O(n²) (a 20 KB word took seconds).
    pub fn merge_word(&self, word: &[u8]) -> Vec<u32> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;

        let last = word.len() - 1;
        let mut symbols: Vec<u32> = word
            .iter()
            .enumerate()
            .filter_map(|(i, &b)| {
                let id = if i == last {
                    self.byte_end_ids[b as usize]
                } else {
                    self.byte_ids[b as usize]
                };
                id.or(self.unk_id)
            })
            .collect();
        let n = symbols.len();
        // A doubly linked list over the symbols; `alive` marks those not merged away.
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut alive = vec![true; n];
        // (rank, left position, left symbol, right symbol): stale entries are skipped.
        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<_>, symbols: &[u32], left: usize, right: usize| {
            if let Some(&(rank, _)) = self.merges.get(&(symbols[left], symbols[right])) {
                heap.push(Reverse((rank, left, symbols[left], symbols[right])));
            }
        };
        for i in 1..n {
            push(&mut heap, &symbols, i - 1, i);
        }
        while let Some(Reverse((_, left, left_symbol, right_symbol))) = heap.pop() {
            let right = next[left];
            let current = alive[left]
                && right < n
                && symbols[left] == left_symbol
                && symbols[right] == right_symbol;
            if !current {
                continue;
            }
            let Some(&(_, merged)) = self.merges.get(&(left_symbol, right_symbol)) else {
                continue;
            };
            symbols[left] = merged;
            alive[right] = false;
            next[left] = next[right];
            if next[right] < n {
                prev[next[right]] = left;
            }
            if prev[left] < n {
                push(&mut heap, &symbols, prev[left], left);
            }
            if next[left] < n {
                push(&mut heap, &symbols, left, next[left]);
            }
        }
        symbols
            .into_iter()
            .zip(alive)
            .filter_map(|(symbol, alive)| alive.then_some(symbol))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy_model() -> BpeModel {
        // Bytes as characters, plus a few merged tokens.
        let mut tokens: Vec<String> = byte_chars_in_vocab_order()
            .iter()
            .map(|(_, c)| c.to_string())
            .collect();
        tokens.extend(
            byte_chars_in_vocab_order()
                .iter()
                .map(|(_, c)| format!("{c}</w>")),
        );
        tokens.extend(
            [
                "lo",
                "low",
                "low</w>",
                "er</w>",
                "lower</w>",
                "aa",
                "aa</w>",
            ]
            .map(String::from),
        );
        let vocab = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, i as u32))
            .collect();
        let merges = [
            ("l", "o"),
            ("lo", "w"),
            ("e", "r</w>"),
            ("lo", "w</w>"),
            ("low", "er</w>"),
            ("a", "a"),
            ("a", "a</w>"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()));
        BpeModel::new(vocab, &merges, None, "toy").unwrap()
    }

    fn tokens(model: &BpeModel, word: &str) -> Vec<String> {
        model
            .merge_word(word.as_bytes())
            .iter()
            .map(|&id| model.token(id).unwrap().to_string())
            .collect()
    }

    #[test]
    fn byte_table_is_a_bijection_onto_printable_characters() {
        let table = byte_to_char();
        let mut seen = std::collections::HashSet::new();
        for (b, &c) in table.iter().enumerate() {
            assert!(
                !c.is_whitespace() && !c.is_control(),
                "byte {b} maps to {c:?}"
            );
            assert!(seen.insert(c));
            assert_eq!(char_to_byte(c), Some(b as u8));
        }
        assert_eq!(table[b'a' as usize], 'a');
        assert_eq!(table[b' ' as usize], '\u{120}');
        assert_eq!(table[0], '\u{100}');
    }

    #[test]
    fn merges_apply_in_rank_order_and_mark_the_word_end() {
        let model = toy_model();
        assert_eq!(tokens(&model, "lower"), ["lower</w>"]);
        assert_eq!(tokens(&model, "low"), ["low</w>"]);
        assert_eq!(tokens(&model, "lows"), ["low", "s</w>"]);
        assert_eq!(tokens(&model, "x"), ["x</w>"]);
    }

    /// The textbook loop: scan all neighbours, merge the leftmost lowest-rank pair, repeat.
    fn merge_word_by_scanning(model: &BpeModel, word: &[u8]) -> Vec<u32> {
        let last = word.len() - 1;
        let mut symbols: Vec<u32> = word
            .iter()
            .enumerate()
            .filter_map(|(i, &b)| match i == last {
                true => model.byte_end_ids[b as usize],
                false => model.byte_ids[b as usize],
            })
            .collect();
        loop {
            let best = (1..symbols.len())
                .filter_map(|i| {
                    let &(rank, merged) = model.merges.get(&(symbols[i - 1], symbols[i]))?;
                    Some((rank, i - 1, merged))
                })
                .min_by_key(|&(rank, i, _)| (rank, i));
            let Some((_, i, merged)) = best else {
                return symbols;
            };
            symbols[i] = merged;
            symbols.remove(i + 1);
        }
    }

    #[test]
    fn the_heap_merge_equals_the_scanning_merge_on_clips_vocabulary() {
        let model = crate::tokenizer::vocab::embedded_model().unwrap();
        // Deterministic pseudo-random words over a small alphabet (many merges apply), plus
        // runs of one letter (overlapping pairs everywhere).
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut words: Vec<Vec<u8>> = ["aaaaaaaaa", "abababab", "lowerlowest", "mississippi"]
            .iter()
            .map(|w| w.as_bytes().to_vec())
            .collect();
        for len in 1..300 {
            let word = (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    b"aeinorstlhcdu"[(state >> 33) as usize % 13]
                })
                .collect();
            words.push(word);
        }
        for word in &words {
            assert_eq!(
                model.merge_word(word),
                merge_word_by_scanning(&model, word),
                "{}",
                String::from_utf8_lossy(word)
            );
        }
    }

    #[test]
    fn overlapping_pairs_merge_leftmost_first() {
        let model = toy_model();
        // (a, a) outranks (a, a</w>): the leftmost `aa` forms first, then the next pair.
        assert_eq!(tokens(&model, "aaa"), ["aa", "a</w>"]);
        assert_eq!(tokens(&model, "aaaa"), ["aa", "aa</w>"]);
    }

    #[test]
    fn merge_naming_an_unknown_token_is_an_error() {
        let vocab = [("a".to_string(), 0), ("b".to_string(), 1)]
            .into_iter()
            .collect();
        let err = BpeModel::new(vocab, &[("a".into(), "b".into())], None, "test vocab")
            .unwrap_err()
            .to_string();
        assert!(err.contains("test vocab") && err.contains("`ab`"), "{err}");
    }
}
