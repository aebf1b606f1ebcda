//! CLIP tokenization, identical to transformers' (slow, pure-Python) `CLIPTokenizer`
//! as diffusers' `StableDiffusionPipeline` calls it: `padding="max_length",
//! max_length=77, truncation=True`. That is the tokenizer the thesis and SD 1.5
//! pipelines ran (transformers ≤ 4.x, without ftfy installed).
//!
//! Two stages: `basic_clean` reproduces the slow tokenizer's text clean-up
//! (transformers' `BasicTokenizer`: control characters dropped, whitespace unified,
//! a space around every CJK ideograph, NFC, lower-case); the `tokenizers` crate then
//! does what both slow and fast tokenizers share: CLIP's word regex, byte-level
//! mapping, BPE with the `</w>` end-of-word suffix. We add `<|startoftext|>` …
//! `<|endoftext|>`, truncate and pad to 77 ourselves.

use std::path::{Path, PathBuf};

use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as Normalizers, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizers;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};
use unicode_general_category::{get_general_category, GeneralCategory};
use unicode_normalization::UnicodeNormalization;

/// CLIP's word pattern (the one in OpenAI's `simple_tokenizer.py` and transformers).
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot build the CLIP tokenizer from {dir}: {reason}")]
    Build { dir: PathBuf, reason: String },
    #[error("the CLIP tokenizer in {dir} has no token `{token}`")]
    MissingToken { dir: PathBuf, token: String },
    #[error("cannot tokenize {prompt:?}: {reason}")]
    Encode { prompt: String, reason: String },
}

pub struct ClipTokenizer {
    inner: Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    max_length: usize,
}

impl ClipTokenizer {
    /// Loads `tokenizer.json` when present, else builds from `vocab.json` + `merges.txt`;
    /// the pad token and length come from `special_tokens_map.json` /
    /// `tokenizer_config.json` (defaults: `<|endoftext|>`, 77).
    pub fn from_dir(dir: &Path) -> Result<ClipTokenizer, TokenizerError> {
        let build_err = |reason: String| TokenizerError::Build {
            dir: dir.to_path_buf(),
            reason,
        };
        let json = dir.join("tokenizer.json");
        let inner = if json.is_file() {
            Tokenizer::from_file(&json).map_err(|e| build_err(e.to_string()))?
        } else {
            build_clip(dir)?
        };
        let config = read_config(dir);
        let pad_name = special_name(&config, "pad_token").unwrap_or_else(|| EOS.to_string());
        let max_length = config
            .iter()
            .find_map(|c| c.get("model_max_length").and_then(|v| v.as_u64()))
            .filter(|&n| n > 2 && n <= 1024)
            .unwrap_or(77) as usize;
        let id = |token: &str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| TokenizerError::MissingToken {
                    dir: dir.to_path_buf(),
                    token: token.to_string(),
                })
        };
        Ok(ClipTokenizer {
            bos: id(BOS)?,
            eos: id(EOS)?,
            pad: id(&pad_name)?,
            max_length,
            inner,
        })
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The `max_length` ids for `prompt`: BOS, at most `max_length - 2` tokens, EOS, padding.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding =
            self.inner
                .encode(basic_clean(prompt), false)
                .map_err(|e| TokenizerError::Encode {
                    prompt: prompt.to_string(),
                    reason: e.to_string(),
                })?;
        let body = encoding.get_ids();
        let body = &body[..body.len().min(self.max_length - 2)];
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos);
        ids.extend_from_slice(body);
        ids.push(self.eos);
        ids.resize(self.max_length, self.pad);
        Ok(ids)
    }
}

/// transformers' `BasicTokenizer(strip_accents=False, do_split_on_punc=False)`
/// followed by the slow `CLIPTokenizer`'s `" ".join(...)`.
pub fn basic_clean(text: &str) -> String {
    let mut spaced = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c == '\0' || c == '\u{FFFD}' || is_control(c) {
            continue;
        }
        if is_cjk_ideograph(c) {
            spaced.extend([' ', c, ' ']);
        } else if is_whitespace(c) {
            spaced.push(' ');
        } else {
            spaced.push(c);
        }
    }
    let normalized: String = spaced.nfc().collect();
    let words: Vec<String> = normalized
        .split(char::is_whitespace)
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    words.join(" ")
}

/// Python's `_is_control`: any `C*` category except tab, newline, carriage return.
fn is_control(c: char) -> bool {
    if matches!(c, '\t' | '\n' | '\r') {
        return false;
    }
    use GeneralCategory::*;
    matches!(
        get_general_category(c),
        Control | Format | Unassigned | PrivateUse | Surrogate
    )
}

/// Python's `_is_whitespace`: space, tab, newline, carriage return or category Zs.
fn is_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
        || get_general_category(c) == GeneralCategory::SpaceSeparator
}

/// The CJK Unified Ideograph blocks `BasicTokenizer._is_chinese_char` lists.
fn is_cjk_ideograph(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

/// CLIP's tokenizer from `vocab.json` + `merges.txt` in `dir`, as transformers' slow
/// `CLIPTokenizer` reads them.
fn build_clip(dir: &Path) -> Result<Tokenizer, TokenizerError> {
    let err = |reason: String| TokenizerError::Build {
        dir: dir.to_path_buf(),
        reason,
    };
    let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
    let path_str = |p: &Path| {
        p.to_str()
            .map(str::to_string)
            .ok_or_else(|| err(format!("{} is not UTF-8", p.display())))
    };
    for p in [&vocab, &merges] {
        if !p.is_file() {
            return Err(err(format!("{} is missing", p.display())));
        }
    }
    let bpe = BPE::from_file(&path_str(&vocab)?, &path_str(&merges)?)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".into())
        .unk_token(EOS.into())
        .build()
        .map_err(|e| err(e.to_string()))?;
    let normalizer = Normalizers::new(vec![
        NFC.into(),
        Replace::new(
            tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
            " ",
        )
        .map_err(|e| err(e.to_string()))?
        .into(),
        Lowercase.into(),
    ]);
    let split = Split::new(
        SplitPattern::Regex(CLIP_PATTERN.into()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(|e| err(e.to_string()))?;
    let pre_tokenizer = PreTokenizers::new(vec![
        split.into(),
        ByteLevel::new(false, true, false).into(),
    ]);
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_normalizer(Some(normalizer));
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.add_special_tokens(&[AddedToken::from(BOS, true), AddedToken::from(EOS, true)]);
    Ok(tokenizer)
}

/// `special_tokens_map.json` and `tokenizer_config.json`, those that exist and parse.
fn read_config(dir: &Path) -> Vec<serde_json::Value> {
    ["special_tokens_map.json", "tokenizer_config.json"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .filter_map(|t| serde_json::from_str(&t).ok())
        .collect()
}

/// A special token's text; written either as a string or as `{"content": …}`.
fn special_name(config: &[serde_json::Value], key: &str) -> Option<String> {
    config.iter().find_map(|c| match c.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        v => v.get("content")?.as_str().map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::basic_clean;

    #[test]
    fn basic_clean_matches_transformers_basic_tokenizer() {
        assert_eq!(basic_clean("  A\tCat\n\nON  a Mat "), "a cat on a mat");
        assert_eq!(basic_clean("猫の絵"), "猫 の 絵");
        assert_eq!(basic_clean("zero\u{200B}width\u{0000}"), "zerowidth");
        assert_eq!(basic_clean("ΟΔΟΣ"), "οδος");
        assert_eq!(basic_clean(""), "");
    }
}
