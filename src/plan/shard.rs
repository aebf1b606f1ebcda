//! `--shard i/n`: which slice of a plan one worker runs.
//!
//! The rule: sort the plan's unique job keys; the job of rank `k` in that order
//! belongs to shard `k mod n`. Every job is in exactly one shard, shard sizes
//! differ by at most one, and since keys are digests each shard gets a random-
//! looking mix of prompts, configurations and ratios (so slow `r = 0` jobs are
//! spread evenly). The slice depends only on the plan, never on what a store
//! holds, so all workers of a job array agree on it without talking. Shards are
//! numbered from 0: `0/4` … `3/4`.
//!
//! In a SLURM job array, `SLURM_ARRAY_TASK_ID`, `SLURM_ARRAY_TASK_COUNT` and
//! (when set) `SLURM_ARRAY_TASK_MIN` / `SLURM_ARRAY_TASK_STEP` give the shard
//! `(ID - MIN) / STEP` of `COUNT`, so `--array=0-7`, `--array=1-8` and
//! `--array=0-14:2` all make shards `0/8` … `7/8`. An array given as a list
//! (`--array=1,5,9`) has no such mapping; pass `--shard` explicitly there.

use std::fmt;
use std::str::FromStr;

/// Worker `index` of `count` (`0 <= index < count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("shard `{0}` is not of the form i/n (e.g. 0/4: the first of 4 shards)")]
    Form(String),
    #[error("shard `{text}`: `{part}` is not a whole number")]
    Number { text: String, part: String },
    #[error("shard `{0}`: the number of shards must be at least 1")]
    ZeroCount(String),
    #[error(
        "shard `{text}`: index {index} is out of range for {count} shards \
         (shards are numbered from 0 to {last})",
        last = count - 1
    )]
    OutOfRange {
        text: String,
        index: usize,
        count: usize,
    },
    #[error("{var} is `{value}`, not a whole number")]
    EnvNumber { var: &'static str, value: String },
    #[error("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; pass --shard i/n")]
    EnvNoCount,
    #[error(
        "SLURM_ARRAY_TASK_ID {id} does not map to a shard of {count} \
         (MIN {min}, STEP {step}: the array is not a plain range); pass --shard i/n"
    )]
    EnvUnmapped {
        id: usize,
        min: usize,
        step: usize,
        count: usize,
    },
}

impl Shard {
    /// The whole plan.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    pub fn new(index: usize, count: usize) -> Result<Shard, ShardError> {
        let text = format!("{index}/{count}");
        if count == 0 {
            return Err(ShardError::ZeroCount(text));
        }
        if index >= count {
            return Err(ShardError::OutOfRange { text, index, count });
        }
        Ok(Shard { index, count })
    }

    /// Whether the job of rank `rank` in sorted key order is in this shard.
    pub fn holds_rank(&self, rank: usize) -> bool {
        rank % self.count == self.index
    }

    /// The shard that SLURM's job-array variables name, `None` outside an array.
    pub fn from_env() -> Result<Option<Shard>, ShardError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`Self::from_env`] over any variable lookup (tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Shard>, ShardError> {
        let num = |name: &'static str| -> Result<Option<usize>, ShardError> {
            match var(name) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| ShardError::EnvNumber {
                        var: name,
                        value: v,
                    }),
            }
        };
        let Some(id) = num("SLURM_ARRAY_TASK_ID")? else {
            return Ok(None);
        };
        let count = num("SLURM_ARRAY_TASK_COUNT")?.ok_or(ShardError::EnvNoCount)?;
        let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        let step = num("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
        let unmapped = ShardError::EnvUnmapped {
            id,
            min,
            step,
            count,
        };
        if id < min || (id - min) % step != 0 || (id - min) / step >= count {
            return Err(unmapped);
        }
        Shard::new((id - min) / step, count).map(Some)
    }
}

impl FromStr for Shard {
    type Err = ShardError;

    fn from_str(s: &str) -> Result<Shard, ShardError> {
        let text = s.trim();
        let (i, n) = text
            .split_once('/')
            .ok_or_else(|| ShardError::Form(s.to_string()))?;
        let parse = |part: &str| -> Result<usize, ShardError> {
            part.trim().parse().map_err(|_| ShardError::Number {
                text: s.to_string(),
                part: part.to_string(),
            })
        };
        let (index, count) = (parse(i)?, parse(n)?);
        if count == 0 {
            return Err(ShardError::ZeroCount(s.to_string()));
        }
        if index >= count {
            return Err(ShardError::OutOfRange {
                text: s.to_string(),
                index,
                count,
            });
        }
        Ok(Shard { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}
