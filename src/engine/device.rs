//! The `--device` value: which execution provider runs the graphs.

use std::fmt;
use std::str::FromStr;

use crate::choice::UnknownChoice;

/// Where the graphs run. CUDA never falls back to the CPU silently: a provider
/// that fails to start is an error (see `Runtime::session`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(i32),
}

impl FromStr for Device {
    type Err = UnknownChoice;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || UnknownChoice {
            what: "device",
            given: s.to_string(),
            choices: "`cpu`, `cuda` or `cuda:N` (N = GPU index)",
        };
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<u16>()
                    .map(|n| Device::Cuda(n.into()))
                    .map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("CUDA".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
        assert_eq!(Device::Cuda(1).to_string(), "cuda:1");
        let err = "gpu".parse::<Device>().unwrap_err().to_string();
        assert!(err.contains("`cpu`, `cuda` or `cuda:N`"), "{err}");
        assert!("cuda:x".parse::<Device>().is_err());
        assert!("cuda:-1".parse::<Device>().is_err());
    }
}
