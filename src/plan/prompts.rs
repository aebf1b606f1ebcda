//! An experiment's prompts and image seeds, drawn as the thesis drew them.
//!
//! The thesis (`src/gen_imgs.py`) read `pd.read_csv(path)[column].values` and then,
//! on numpy's global `RandomState`, which it never seeded:
//!
//! ```python
//! idcs = np.random.randint(0, len(all_prompts), sample_size)
//! prompts = all_prompts[idcs]
//! seeds = np.random.randint(0, 4294967295, len(prompts))
//! ```
//!
//! Its numbers cannot be repeated (no seed), so tomex makes the same two numpy
//! calls on seeded states, each a stream of its own as the spec format says
//! ([`SeedSource::Drawn`]):
//!
//! * rows: `RandomState(prompts.sampling_seed).randint(0, n, sample)` (with
//!   replacement, the thesis's way: a prompt may come twice, with two seeds), or
//!   with `replace = false`, `RandomState(sampling_seed).choice(n, sample,
//!   replace=False)` (numpy's legacy `permutation(n)[:sample]`); without
//!   `sample`, every row in file order;
//! * seeds: `RandomState(seeds.draw_seed).randint(0, 4294967295, len(rows))`, or
//!   the listed seeds, cycled.
//!
//! Because each stream starts at its own seed, a spec sampling 1000 prompts gets
//! the same first 500 prompt/seed pairs as one sampling 500 with the same seeds
//! (the thesis's 1.4 repeated its 500-prompt experiments with 500 more), and the
//! store makes those images once. The thesis's single-stream order (seeds drawn
//! after the rows from the same state) is [`thesis_sequence`].

use super::numpy::{NumpyRandomState, SeedOutOfRange};
use crate::diffusion::prompt::{cut_prompt, THESIS_MAX_CHARS};
use crate::spec::{PromptSource, SeedSource};

/// The thesis's `high` for image seeds: `np.random.randint(0, 4294967295, n)`
/// (so the seed `2^32 - 1` itself is never drawn).
pub const THESIS_SEED_HIGH: i64 = 4_294_967_295;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PromptError {
    #[error("cannot sample {sample} prompts from an empty prompt list")]
    NoPrompts { sample: usize },
    #[error("cannot sample {sample} prompts without replacement from {available}")]
    TooFew { sample: usize, available: usize },
    #[error("prompt sampling: {0}")]
    SamplingSeed(SeedOutOfRange),
    #[error("image seeds: {0}")]
    ImageSeed(SeedOutOfRange),
    #[error("the seed list is empty")]
    NoSeeds,
}

/// One prompt of an experiment with its image seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrawnPrompt {
    /// Row in the prompt file (0 = first row after the header).
    pub row: usize,
    /// The prompt as the file has it.
    pub text: String,
    /// What the text encoder gets: `text` after the cut rule when it is on.
    pub prompt: String,
    pub seed: u64,
}

/// The rows a spec samples from `n` prompts (see the module docs).
pub fn sample_rows(source: &PromptSource, n: usize) -> Result<Vec<usize>, PromptError> {
    let Some(sample) = source.sample else {
        return Ok((0..n).collect());
    };
    if sample == 0 {
        return Ok(Vec::new());
    }
    if n == 0 {
        return Err(PromptError::NoPrompts { sample });
    }
    let mut rs = NumpyRandomState::new(source.sampling_seed).map_err(PromptError::SamplingSeed)?;
    if source.replace {
        Ok(rs
            .randint(0, n as i64, sample)
            .into_iter()
            .map(|i| i as usize)
            .collect())
    } else {
        if sample > n {
            return Err(PromptError::TooFew {
                sample,
                available: n,
            });
        }
        Ok(rs.choice_without_replacement(n, sample))
    }
}

/// The image seeds of `count` prompts (see the module docs).
pub fn image_seeds(seeds: &SeedSource, count: usize) -> Result<Vec<u64>, PromptError> {
    match seeds {
        SeedSource::Drawn { seed } => {
            let mut rs = NumpyRandomState::new(*seed).map_err(PromptError::ImageSeed)?;
            Ok(rs
                .randint(0, THESIS_SEED_HIGH, count)
                .into_iter()
                .map(|s| s as u64)
                .collect())
        }
        SeedSource::Listed(list) => {
            if list.is_empty() && count > 0 {
                return Err(PromptError::NoSeeds);
            }
            Ok((0..count).map(|i| list[i % list.len()]).collect())
        }
    }
}

/// The experiment's prompts and seeds from every prompt of its file.
pub fn draw(
    source: &PromptSource,
    seeds: &SeedSource,
    all: &[String],
) -> Result<Vec<DrawnPrompt>, PromptError> {
    let rows = sample_rows(source, all.len())?;
    let seeds = image_seeds(seeds, rows.len())?;
    Ok(rows
        .into_iter()
        .zip(seeds)
        .map(|(row, seed)| {
            let text = all[row].clone();
            let prompt = if source.cut_long_prompts {
                cut_prompt(&text, THESIS_MAX_CHARS)
            } else {
                text.clone()
            };
            DrawnPrompt {
                row,
                text,
                prompt,
                seed,
            }
        })
        .collect())
}

/// The thesis's exact sequence had it called `np.random.seed(seed)` first: rows
/// `randint(0, n, sample)`, then seeds `randint(0, 4294967295, sample)` from the
/// same state. (Specs draw the two from separate seeds instead; see the module docs.)
pub fn thesis_sequence(
    seed: u64,
    n: usize,
    sample: usize,
) -> Result<(Vec<usize>, Vec<u64>), PromptError> {
    let mut rs = NumpyRandomState::new(seed).map_err(PromptError::SamplingSeed)?;
    if n == 0 && sample > 0 {
        return Err(PromptError::NoPrompts { sample });
    }
    let rows = rs
        .randint(0, n as i64, sample)
        .into_iter()
        .map(|i| i as usize)
        .collect();
    let seeds = rs
        .randint(0, THESIS_SEED_HIGH, sample)
        .into_iter()
        .map(|s| s as u64)
        .collect();
    Ok((rows, seeds))
}
