//! The CLIP tokenizer against transformers' `CLIPTokenizer` on a committed prompt corpus
//! (fixtures/tokenizer/, written by tools/reference/parts/tokenizer.py).

mod common;

use std::path::{Path, PathBuf};

use stable_diffusion::tokenizer::{
    ClipTokenizer, PadStyle, BOS_ID, EOS_ID, EXCLAMATION_ID, MAX_LEN,
};
use stable_diffusion::Error;

/// One prompt of the corpus and what the reference made of it.
struct Record {
    text: String,
    ids: Vec<u32>,
    padded_eot: Vec<u32>,
    padded_excl: Vec<u32>,
    ids_excl: Vec<u32>,
    decoded: String,
}

fn ids(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .expect("id list")
        .iter()
        .map(|v| v.as_u64().expect("id") as u32)
        .collect()
}

fn records() -> Vec<Record> {
    let fixture = common::load_json("tokenizer/ids.json");
    let prompts = common::load_json("tokenizer/prompts.json");
    let records: Vec<Record> = fixture["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| Record {
            text: r["text"].as_str().expect("text").to_string(),
            ids: ids(&r["ids"]),
            padded_eot: ids(&r["padded_eot"]),
            padded_excl: ids(&r["padded_excl"]),
            ids_excl: ids(&r["ids_excl"]),
            decoded: r["decoded"].as_str().expect("decoded").to_string(),
        })
        .collect();
    let prompts: Vec<&str> = prompts
        .as_array()
        .expect("prompt list")
        .iter()
        .map(|p| p.as_str().expect("prompt"))
        .collect();
    assert_eq!(
        records.iter().map(|r| r.text.as_str()).collect::<Vec<_>>(),
        prompts
    );
    assert!(records.len() >= 150, "corpus too small: {}", records.len());
    assert_eq!(fixture["max_len"], MAX_LEN);
    records
}

fn tiny_sd15_tokenizer_folder() -> PathBuf {
    common::fixture("models/tiny-sd15/tokenizer")
}

/// Checks every prompt of the corpus, collecting all mismatches before failing.
fn assert_matches_reference(tokenizer: &ClipTokenizer, which: &str) {
    let records = records();
    let sd2 = tokenizer.clone().with_pad_style(PadStyle::Exclamation);
    let mut failures = Vec::new();
    for r in &records {
        let checks = [
            ("untruncated", tokenizer.encode(&r.text).unwrap(), &r.ids),
            (
                "untruncated, pad token !",
                sd2.encode(&r.text).unwrap(),
                &r.ids_excl,
            ),
            (
                "padded with <|endoftext|>",
                tokenizer
                    .encode_padded(&r.text, MAX_LEN, PadStyle::EndOfText)
                    .unwrap(),
                &r.padded_eot,
            ),
            (
                "padded with !",
                tokenizer
                    .encode_padded(&r.text, MAX_LEN, PadStyle::Exclamation)
                    .unwrap(),
                &r.padded_excl,
            ),
        ];
        for (what, actual, expected) in checks {
            if &actual != expected {
                failures.push(format!(
                    "{which}, {what}, {:?}:\n  ours {actual:?}\n  ref  {expected:?}",
                    r.text
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} prompts differ:\n{}",
        failures.len(),
        records.len(),
        failures.join("\n")
    );
}

#[test]
fn embedded_vocab_matches_transformers_on_the_prompt_corpus() {
    let tokenizer = ClipTokenizer::embedded().unwrap();
    assert_eq!(tokenizer.vocab_size(), 49408);
    assert_matches_reference(&tokenizer, "embedded");
}

#[test]
fn folder_vocab_matches_transformers_on_the_prompt_corpus() {
    let tokenizer = ClipTokenizer::from_folder(&tiny_sd15_tokenizer_folder()).unwrap();
    assert_eq!(tokenizer.vocab_size(), 49408);
    assert_eq!(tokenizer.max_len(), MAX_LEN);
    assert_eq!(tokenizer.default_pad_style(), PadStyle::EndOfText);
    assert_matches_reference(&tokenizer, "folder");
}

#[test]
fn files_vocab_matches_transformers_on_the_prompt_corpus() {
    let folder = tiny_sd15_tokenizer_folder();
    let tokenizer =
        ClipTokenizer::from_files(&folder.join("vocab.json"), &folder.join("merges.txt")).unwrap();
    assert_matches_reference(&tokenizer, "files");
}

#[test]
fn embedded_and_folder_vocabs_are_identical() {
    let embedded = ClipTokenizer::embedded().unwrap();
    let folder = ClipTokenizer::from_folder(&tiny_sd15_tokenizer_folder()).unwrap();
    for id in 0..49408u32 {
        let token = embedded.id_to_token(id).expect("every id has a token");
        assert_eq!(folder.id_to_token(id), Some(token), "id {id}");
        assert_eq!(folder.token_to_id(token), Some(id), "token {token}");
    }
}

#[test]
fn decode_matches_transformers_on_the_prompt_corpus() {
    let tokenizer = ClipTokenizer::embedded().unwrap();
    let mismatches: Vec<String> = records()
        .iter()
        .filter(|r| tokenizer.decode(&r.ids) != r.decoded)
        .map(|r| {
            format!(
                "{:?}: ours {:?}, ref {:?}",
                r.text,
                tokenizer.decode(&r.ids),
                r.decoded
            )
        })
        .collect();
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn padded_window_is_start_75_tokens_end_then_padding() {
    let tokenizer = ClipTokenizer::embedded().unwrap();
    let short = tokenizer
        .encode_padded("a cat", MAX_LEN, PadStyle::Exclamation)
        .unwrap();
    assert_eq!(short.len(), 77);
    assert_eq!(&short[..4], &[BOS_ID, 320, 2368, EOS_ID]);
    assert!(short[4..].iter().all(|&id| id == EXCLAMATION_ID));

    let long_text = "cat ".repeat(100);
    let long = tokenizer
        .encode_padded(&long_text, MAX_LEN, PadStyle::EndOfText)
        .unwrap();
    assert_eq!(long.len(), 77);
    assert_eq!(long[0], BOS_ID);
    assert!(long[1..76].iter().all(|&id| id == 2368));
    assert_eq!(long[76], EOS_ID);
    assert_eq!(tokenizer.encode(&long_text).unwrap().len(), 102);

    assert!(matches!(
        tokenizer.encode_padded("x", 1, PadStyle::EndOfText),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(PadStyle::EndOfText.pad_id(), EOS_ID);
    assert_eq!(PadStyle::Exclamation.pad_id(), 0);
}

#[test]
fn exclamation_padding_reads_a_prompt_exclamation_mark_as_the_pad_token() {
    // transformers' CLIPTokenizer with pad_token "!" (SD 2.x) makes "!" a special token.
    let tokenizer = ClipTokenizer::embedded().unwrap();
    let sd1 = tokenizer
        .encode_padded("wow!", 6, PadStyle::EndOfText)
        .unwrap();
    assert_eq!(sd1, [BOS_ID, 2781, 256, EOS_ID, EOS_ID, EOS_ID]);
    let sd2 = tokenizer
        .encode_padded("wow!", 6, PadStyle::Exclamation)
        .unwrap();
    assert_eq!(sd2, [BOS_ID, 2781, 0, EOS_ID, 0, 0]);
    let sd2_tokenizer = tokenizer.with_pad_style(PadStyle::Exclamation);
    assert_eq!(
        sd2_tokenizer.encode("wow!").unwrap(),
        [BOS_ID, 2781, 0, EOS_ID]
    );
    assert_eq!(sd2_tokenizer.decode(&sd2), "wow");
}

#[test]
fn vocabulary_lookups_find_tokens_and_single_token_words() {
    let tokenizer = ClipTokenizer::embedded().unwrap();
    assert_eq!(tokenizer.token_to_id("cat</w>"), Some(2368));
    assert_eq!(tokenizer.token_to_id("<|startoftext|>"), Some(BOS_ID));
    assert_eq!(tokenizer.id_to_token(0), Some("!"));
    assert_eq!(tokenizer.id_to_token(49408), None);
    assert_eq!(tokenizer.word_id("Cat"), Some(2368));
    assert_eq!(tokenizer.word_id("a cat"), None);
    assert_eq!(
        tokenizer.word_id("supercalifragilisticexpialidocious"),
        None
    );
}

#[test]
fn added_tokens_get_new_ids_and_are_matched_in_raw_text() {
    let mut tokenizer = ClipTokenizer::embedded().unwrap();
    let id = tokenizer.add_token("<my-style>").unwrap();
    assert_eq!(id, 49408);
    assert_eq!(tokenizer.add_token("<my-style>").unwrap(), 49408);
    assert_eq!(tokenizer.add_token("cat</w>").unwrap(), 2368);
    assert_eq!(tokenizer.vocab_size(), 49409);
    assert_eq!(
        tokenizer.encode("a <my-style>cat").unwrap(),
        [BOS_ID, 320, 49408, 2368, EOS_ID]
    );
    assert_eq!(
        tokenizer.decode(&[BOS_ID, 320, 49408, EOS_ID]),
        "a <my-style>"
    );
    assert!(tokenizer.add_token("").is_err());
    // The shared embedded tokenizer is unchanged.
    let fresh = ClipTokenizer::embedded().unwrap();
    assert_eq!(fresh.vocab_size(), 49408);
    assert_eq!(fresh.token_to_id("<my-style>"), None);
}

#[test]
fn tokenizer_is_shared_across_threads() {
    let tokenizer = ClipTokenizer::embedded().unwrap();
    let expected = tokenizer.encode("a red fox in the snow, 4k").unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..50 {
                    assert_eq!(
                        tokenizer.encode("a red fox in the snow, 4k").unwrap(),
                        expected
                    );
                }
            });
        }
    });
}

/// A scratch folder in the temp dir, removed when dropped.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("sd-tokenizer-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

fn copy_vocab(to: &Path) {
    let from = tiny_sd15_tokenizer_folder();
    for file in ["vocab.json", "merges.txt"] {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
}

fn error_of(dir: &Path) -> String {
    ClipTokenizer::from_folder(dir).unwrap_err().to_string()
}

#[test]
fn missing_folder_is_a_not_found_error() {
    let parent = scratch("missing");
    let dir = parent.join("nope");
    let err = ClipTokenizer::from_folder(&dir).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn folder_without_vocabulary_files_is_a_not_found_error() {
    let dir = scratch("empty");
    let err = ClipTokenizer::from_folder(&dir).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("vocab.json"), "{err}");
}

#[test]
fn missing_merges_file_is_named_in_the_error() {
    let dir = scratch("no-merges");
    copy_vocab(&dir);
    std::fs::remove_file(dir.join("merges.txt")).unwrap();
    let err = ClipTokenizer::from_folder(&dir).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("merges.txt"), "{err}");
}

#[test]
fn corrupt_vocab_json_is_named_in_the_error() {
    let dir = scratch("bad-json");
    copy_vocab(&dir);
    std::fs::write(dir.join("vocab.json"), "{\"a\": 0, \"b\": ").unwrap();
    let err = error_of(&dir);
    assert!(
        err.contains("vocab.json") && err.contains("invalid JSON"),
        "{err}"
    );

    std::fs::write(dir.join("vocab.json"), "[1, 2, 3]").unwrap();
    let err = error_of(&dir);
    assert!(
        err.contains("vocab.json") && err.contains("not an object"),
        "{err}"
    );

    std::fs::write(dir.join("vocab.json"), "{\"a\": -1}").unwrap();
    let err = error_of(&dir);
    assert!(err.contains("`a`") && err.contains("-1"), "{err}");
}

#[test]
fn corrupt_merges_are_named_in_the_error() {
    let dir = scratch("bad-merges");
    copy_vocab(&dir);
    std::fs::write(
        dir.join("merges.txt"),
        "#version: 0.2\ni n\nthree parts here\n",
    )
    .unwrap();
    let err = error_of(&dir);
    assert!(
        err.contains("merges.txt") && err.contains("line 3"),
        "{err}"
    );

    std::fs::write(dir.join("merges.txt"), "#version: 0.2\ni n\n\u{2603} z\n").unwrap();
    let err = error_of(&dir);
    assert!(
        err.contains("not in the vocabulary") && err.contains("`\u{2603}`"),
        "{err}"
    );
}

#[test]
fn vocabulary_without_special_tokens_is_an_error() {
    let dir = scratch("no-specials");
    std::fs::write(dir.join("vocab.json"), "{\"a\": 0, \"b\": 1, \"ab\": 2}").unwrap();
    std::fs::write(dir.join("merges.txt"), "#version: 0.2\na b\n").unwrap();
    let err = error_of(&dir);
    assert!(
        err.contains("<|startoftext|>") && err.contains("no-specials"),
        "{err}"
    );
    let err = ClipTokenizer::from_files(&dir.join("vocab.json"), &dir.join("merges.txt"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("<|startoftext|>") && err.contains("vocab.json"),
        "{err}"
    );
}

#[test]
fn folder_config_chooses_the_padding_and_rejects_unknown_pad_tokens() {
    let dir = scratch("pad-config");
    copy_vocab(&dir);
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"pad_token": "!", "model_max_length": 77}"#,
    )
    .unwrap();
    let tokenizer = ClipTokenizer::from_folder(&dir).unwrap();
    assert_eq!(tokenizer.default_pad_style(), PadStyle::Exclamation);
    assert_eq!(tokenizer.pad_id(PadStyle::Exclamation).unwrap(), 0);

    // Older transformers write special tokens as objects with a `content` field.
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"pad_token": {"__type": "AddedToken", "content": "<|endoftext|>"}}"#,
    )
    .unwrap();
    let tokenizer = ClipTokenizer::from_folder(&dir).unwrap();
    assert_eq!(tokenizer.default_pad_style(), PadStyle::EndOfText);

    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"pad_token": "<pad>"}"#,
    )
    .unwrap();
    let err = error_of(&dir);
    assert!(err.contains("<pad>"), "{err}");

    std::fs::write(dir.join("tokenizer_config.json"), "not json").unwrap();
    let err = error_of(&dir);
    assert!(err.contains("tokenizer_config.json"), "{err}");
}

#[test]
fn tokenizer_json_folder_loads_the_same_vocabulary() {
    // A folder holding only tokenizer.json, as transformers 5's save_pretrained writes it
    // (merges as pairs), built here from the committed vocab.json / merges.txt.
    let dir = scratch("tokenizer-json");
    let source = tiny_sd15_tokenizer_folder();
    let vocab: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("vocab.json")).unwrap()).unwrap();
    let merges: Vec<serde_json::Value> = std::fs::read_to_string(source.join("merges.txt"))
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            serde_json::json!([a, b])
        })
        .collect();
    let json = serde_json::json!({"model": {"type": "BPE", "vocab": vocab, "merges": merges}});
    std::fs::write(dir.join("tokenizer.json"), json.to_string()).unwrap();
    let from_json = ClipTokenizer::from_folder(&dir).unwrap();
    let embedded = ClipTokenizer::embedded().unwrap();
    for r in records().iter().take(60) {
        assert_eq!(from_json.encode(&r.text).unwrap(), r.ids, "{:?}", r.text);
    }
    assert_eq!(from_json.vocab_size(), embedded.vocab_size());
}
