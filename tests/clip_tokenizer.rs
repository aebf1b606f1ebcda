//! Token ids equal to transformers' `CLIPTokenizer` (golden/clip_tokens.json, made by
//! tools/golden_tokens.py), exactly: ids are integers, there is no tolerance.

mod common;

use tomex::diffusion::prompt::{cut_prompt, THESIS_MAX_CHARS};
use tomex::diffusion::tokenizer::ClipTokenizer;

#[test]
fn token_ids_match_transformers() {
    let golden = common::read_json(&common::golden("clip_tokens.json"));
    let tokenizer = ClipTokenizer::from_dir(&common::tiny_model().join("tokenizer")).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 50, "only {} golden prompts", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let expected: Vec<u32> = case["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let actual = tokenizer.encode(prompt).unwrap();
        if actual != expected {
            failures.push(format!(
                "{prompt:?}\n  expected {expected:?}\n  actual   {actual:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} prompts differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn prompt_cut_matches_the_thesis_script() {
    let golden = common::read_json(&common::golden("clip_tokens.json"));
    let cases = golden["cut_cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        assert_eq!(
            cut_prompt(prompt, THESIS_MAX_CHARS),
            case["cut"].as_str().unwrap(),
            "prompt {prompt:?}"
        );
    }
}

/// A model that ships a single `tokenizer.json` (as transformers 5 saves it, made by
/// tools/make_tokenizer_json.py) tokenizes exactly like vocab.json + merges.txt.
#[test]
fn tokenizer_json_gives_the_same_ids() {
    let golden = common::read_json(&common::golden("clip_tokens.json"));
    let from_bpe = ClipTokenizer::from_dir(&common::tiny_model().join("tokenizer")).unwrap();
    let from_json =
        ClipTokenizer::from_dir(&common::repo().join("tests/fixtures/tokenizer_json")).unwrap();
    for case in golden["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        assert_eq!(
            from_json.encode(prompt).unwrap(),
            from_bpe.encode(prompt).unwrap(),
            "prompt {prompt:?}"
        );
    }
}
