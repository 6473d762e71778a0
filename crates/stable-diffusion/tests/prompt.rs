//! A1111 prompt syntax: the attention parser and extra-network tags against hand-derived
//! fixtures (tools/reference/parts/prompts.py), chunk boundaries, emphasis and clip skip on the
//! tiny SD 1.5 text encoder against a torch reference, and textual-inversion loading errors.

mod common;

use stable_diffusion::loading::embeddings::TextualInversion;
use stable_diffusion::pipeline::{LoadOptions, StableDiffusion, TextOptions};
use stable_diffusion::prompt::{
    chunk_tokens, extract_extra_networks, parse_attention, PromptSyntax, WeightedTokens,
    COMMA_BACKTRACK,
};
use stable_diffusion::tokenizer::{ClipTokenizer, PadStyle};

#[test]
fn parse_attention_matches_a1111_on_every_fixture_case() {
    let cases = common::load_json("prompts/parse_cases.json");
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 50, "only {} cases", cases.len());
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let expected: Vec<(String, f64)> = case["expected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                // The weight's text: serde_json's own float reading may be off by an ulp.
                let weight: f64 = p[2].as_str().unwrap().parse().unwrap();
                assert_eq!(weight as f32, p[1].as_f64().unwrap() as f32);
                (p[0].as_str().unwrap().to_string(), weight)
            })
            .collect();
        let actual: Vec<(String, f64)> = parse_attention(prompt)
            .into_iter()
            .map(|p| (p.text, p.weight))
            .collect();
        // Exact: the weights are products in the same order as A1111's.
        assert_eq!(actual, expected, "prompt {prompt:?}");
    }
}

#[test]
fn parse_attention_marks_only_plain_break_as_a_chunk_break() {
    let pieces = parse_attention("a BREAK (b BREAK c)");
    let breaks: Vec<bool> = pieces.iter().map(|p| p.is_break()).collect();
    assert_eq!(breaks, [false, true, false, false, false, false]);
}

#[test]
fn extra_network_tags_are_cut_out_as_a1111_does() {
    let cases = common::load_json("prompts/extra_network_cases.json");
    for case in cases.as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let (text, tags) = extract_extra_networks(prompt);
        assert_eq!(text, case["text"].as_str().unwrap(), "prompt {prompt:?}");
        let actual: Vec<Vec<String>> = tags
            .iter()
            .map(|t| {
                std::iter::once(t.kind.clone())
                    .chain(t.args.clone())
                    .collect()
            })
            .collect();
        let expected: Vec<Vec<String>> = case["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                t.as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_string())
                    .collect()
            })
            .collect();
        assert_eq!(actual, expected, "prompt {prompt:?}");
    }
    let (_, tags) = extract_extra_networks("<lora:film:0.8:0.5>");
    assert_eq!(tags[0].name(), "film");
    assert_eq!(tags[0].number(1, 1.0).unwrap(), 0.8);
    assert_eq!(tags[0].number(2, 1.0).unwrap(), 0.5);
    assert_eq!(tags[0].number(3, 1.0).unwrap(), 1.0);
    assert!(extract_extra_networks("<lora:x:big>").1[0]
        .number(1, 1.0)
        .is_err());
}

/// Chunk lengths of `prompt` parsed and tokenized as the A1111 path does.
fn chunk_lengths(tokenizer: &ClipTokenizer, prompt: &str) -> Vec<usize> {
    let pieces: Vec<WeightedTokens> = parse_attention(prompt)
        .into_iter()
        .map(|p| {
            if p.is_break() {
                WeightedTokens::Break
            } else {
                let ids = tokenizer
                    .encode_content(&p.text, PadStyle::EndOfText)
                    .unwrap();
                WeightedTokens::Tokens {
                    units: ids.into_iter().map(|id| vec![id]).collect(),
                    weight: p.weight,
                }
            }
        })
        .collect();
    let comma = tokenizer.token_to_id(",</w>");
    chunk_tokens(&pieces, 75, comma, COMMA_BACKTRACK)
        .iter()
        .map(|c| c.tokens.len())
        .collect()
}

#[test]
fn long_prompts_are_cut_at_a1111_chunk_boundaries() {
    let tokenizer = ClipTokenizer::embedded().unwrap();
    let words = |w: &str, n: usize| vec![w; n].join(" ");
    // 80 one-token words: 75 + 5.
    assert_eq!(chunk_lengths(&tokenizer, &words("a", 80)), [75, 5]);
    // A comma 5 tokens before the end moves those 4 tokens into the next chunk.
    let p = format!("{}, {}", words("a", 70), words("b", 10));
    assert_eq!(chunk_lengths(&tokenizer, &p), [71, 10]);
    // A comma 25 tokens back is too far (the limit is 20): a hard cut.
    let p = format!("{}, {}", words("a", 50), words("b", 30));
    assert_eq!(chunk_lengths(&tokenizer, &p), [75, 6]);
    // Exactly 20 back still moves: comma at 55, full at 75.
    let p = format!("{}, {}", words("a", 55), words("b", 25));
    assert_eq!(chunk_lengths(&tokenizer, &p), [56, 25]);
    // 21 back does not.
    let p = format!("{}, {}", words("a", 54), words("b", 26));
    assert_eq!(chunk_lengths(&tokenizer, &p), [75, 6]);
    // BREAK forces a chunk; after a full chunk it adds no empty one.
    assert_eq!(chunk_lengths(&tokenizer, "a BREAK b"), [1, 1]);
    assert_eq!(
        chunk_lengths(&tokenizer, &format!("{} BREAK b", words("a", 75))),
        [75, 1]
    );
    assert_eq!(chunk_lengths(&tokenizer, "BREAK a"), [0, 1]);
    assert_eq!(chunk_lengths(&tokenizer, ""), [0]);
}

#[test]
fn chunking_keeps_weights_and_never_splits_an_embedding() {
    let tokens = |ids: &[u32], weight: f64| WeightedTokens::Tokens {
        units: ids.iter().map(|&id| vec![id]).collect(),
        weight,
    };
    let singles: Vec<u32> = (1..=74).collect();
    let pieces = [
        tokens(&singles, 1.5),
        WeightedTokens::Tokens {
            units: vec![vec![900, 901, 902]],
            weight: 0.5,
        },
    ];
    let chunks = chunk_tokens(&pieces, 75, None, COMMA_BACKTRACK);
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[0].tokens, singles);
    assert!(chunks[0].weights.iter().all(|&w| w == 1.5));
    assert_eq!(chunks[1].tokens, [900, 901, 902]);
    assert_eq!(chunks[1].weights, [0.5, 0.5, 0.5]);
    let window = chunks[1].window_weights(77);
    assert_eq!(window.len(), 77);
    assert_eq!(&window[..5], &[1.0, 0.5, 0.5, 0.5, 1.0]);
}

fn tiny_sd15() -> StableDiffusion {
    StableDiffusion::load(
        &common::fixture("models/tiny-sd15"),
        &LoadOptions::default(),
    )
    .unwrap()
}

#[test]
fn emphasis_and_chunks_match_reference_on_tiny_text_encoder() {
    let model = tiny_sd15();
    let prompts = common::load_json("prompts/emphasis_prompts.json");
    let expected = common::load_tensors("prompts/emphasis.safetensors");
    for (name, prompt) in prompts.as_object().unwrap() {
        for clip_skip in [1, 2] {
            let options = TextOptions {
                syntax: PromptSyntax::A1111,
                clip_skip,
            };
            let actual = model
                .encode_prompt_with(prompt.as_str().unwrap(), options, 0)
                .unwrap()
                .context;
            let key = if clip_skip == 1 {
                name.clone()
            } else {
                format!("{name}_clip_skip{clip_skip}")
            };
            let diff = common::max_abs_diff(&actual, &expected[&key]);
            eprintln!("{key}: max |diff| {diff:e}");
            common::assert_close(&key, &actual, &expected[&key], 1e-4);
        }
    }
}

#[test]
fn plain_syntax_reads_brackets_literally_and_cuts_at_77_tokens() {
    let model = tiny_sd15();
    let plain = TextOptions::default();
    let a1111 = TextOptions {
        syntax: PromptSyntax::A1111,
        clip_skip: 1,
    };
    let long = vec!["a"; 100].join(" ");
    let p = model.encode_prompt_with(&long, plain, 0).unwrap().context;
    assert_eq!(p.dims(), [1, 77, 32]);
    let a = model.encode_prompt_with(&long, a1111, 0).unwrap().context;
    assert_eq!(a.dims(), [1, 154, 32]);
    let weighted = "a (red:1.5) circle";
    let p = model
        .encode_prompt_with(weighted, plain, 0)
        .unwrap()
        .context;
    let a = model
        .encode_prompt_with(weighted, a1111, 0)
        .unwrap()
        .context;
    assert!(common::max_abs_diff(&p, &a) > 1e-3);
    // Padding to a chunk count adds whole empty windows.
    let padded = model.encode_prompt_with("a cat", a1111, 3).unwrap().context;
    assert_eq!(padded.dims(), [1, 231, 32]);
}

#[test]
fn embeddings_load_and_a_wrong_width_names_file_and_both_widths() {
    let dir = common::fixture("prompts");
    let single = TextualInversion::load(&dir.join("tisingle.safetensors")).unwrap();
    assert_eq!(single.name, "tisingle");
    assert_eq!(single.first.as_ref().unwrap().dims(), [1, 32]);
    let multi = TextualInversion::load(&dir.join("tivec.safetensors")).unwrap();
    assert_eq!(multi.first.as_ref().unwrap().dims(), [3, 32]);

    let mut model = tiny_sd15();
    let a1111 = TextOptions {
        syntax: PromptSyntax::A1111,
        clip_skip: 1,
    };
    let before = model.encode_prompt_with("a tivec cat", a1111, 0).unwrap();
    model.add_embedding(&multi).unwrap();
    let after = model.encode_prompt_with("a tivec cat", a1111, 0).unwrap();
    assert!(common::max_abs_diff(&before.context, &after.context) > 1e-3);
    let again = model.add_embedding(&multi).unwrap_err().to_string();
    assert!(again.contains("already loaded"), "{again}");

    let wrong = TextualInversion::load(&dir.join("wrongwidth.safetensors")).unwrap();
    let err = model.add_embedding(&wrong).unwrap_err().to_string();
    assert!(err.contains("wrongwidth.safetensors"), "{err}");
    assert!(err.contains("48") && err.contains("32"), "{err}");

    let err = TextualInversion::load(&dir.join("missing.pt"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("pt"), "{err}");
}

#[test]
fn embeddings_are_found_in_subfolders_as_a1111_finds_them() {
    let dir = std::env::temp_dir().join(format!("sd-embeddings-walk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let nested = dir.join("styles").join("old");
    std::fs::create_dir_all(&nested).unwrap();
    let source = common::fixture("prompts/tivec.safetensors");
    for path in [
        dir.join("top.safetensors"),
        dir.join("styles").join("mid.pt"),
        nested.join("deep.bin"),
        nested.join(".hidden.safetensors"),
        nested.join("notes.txt"),
    ] {
        std::fs::copy(&source, path).unwrap();
    }
    #[cfg(unix)]
    std::os::unix::fs::symlink(&dir, nested.join("loop")).unwrap();
    let found = TextualInversion::files_in(&dir).unwrap();
    let names: std::collections::BTreeSet<String> = found
        .iter()
        .filter_map(|p| TextualInversion::name_of(p))
        .collect();
    let expected: std::collections::BTreeSet<String> = ["top", "mid", "deep"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(names, expected, "{found:?}");
    // The symlink loop leads back to a folder already read: nothing twice.
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found.windows(2).all(|w| w[0] <= w[1]), "sorted: {found:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
