//! The error of a name that must be one of a fixed set (a flag's or a spec key's
//! value: attention, precision, token-op placement), shared by the layers that parse one.

/// `given` is none of the names of `what`; `choices` lists them with what each means.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{given}`: use {choices}")]
pub struct UnknownChoice {
    pub what: &'static str,
    pub given: String,
    pub choices: &'static str,
}
