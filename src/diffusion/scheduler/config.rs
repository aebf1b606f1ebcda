//! `scheduler_config.json`, read the way diffusers' `ConfigMixin.from_config` reads it.
//!
//! diffusers builds a scheduler with `SchedulerClass.from_config(config)`, which
//! (`ConfigMixin.extract_init_dict`):
//!
//! 1. drops the keys listed in `_use_default_values` (they were defaults when the
//!    file was written, so the *loading* class's own defaults apply instead);
//! 2. passes to `__init__` exactly the keys that the class's `__init__` accepts;
//! 3. ignores every other key (private `_...` keys, keys of other classes).
//!
//! So the same file gives different values to different classes: SD 1.5's file
//! has no `timestep_spacing`, which makes `PNDMScheduler`/`DDIMScheduler` use
//! `"leading"` and `EulerDiscreteScheduler`/`DPMSolverMultistepScheduler` use
//! `"linspace"`. [`SchedulerConfig`] therefore keeps the raw key/value map, and
//! each scheduler asks only for the keys its diffusers class accepts, with that
//! class's defaults ([`SchedulerConfig::f64_or`] and friends).
//!
//! JSON `null` is read like Python's `None`: "absent" for optional values
//! (`trained_betas`, …) and *false* for booleans (diffusers only tests their
//! truthiness). A `null` where diffusers needs a number or a string is an error.

use serde_json::{Map, Value};

use super::SchedulerError;

/// The key/value map of a `scheduler_config.json`, after diffusers'
/// `_use_default_values` filtering.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchedulerConfig {
    raw: Map<String, Value>,
}

impl SchedulerConfig {
    /// Parses the text of a `scheduler_config.json`.
    pub fn from_json(text: &str) -> Result<Self, SchedulerError> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            SchedulerError::Config(format!("scheduler config is not valid JSON: {e}"))
        })?;
        match value {
            Value::Object(map) => Self::from_map(map),
            other => Err(SchedulerError::Config(format!(
                "scheduler config must be a JSON object, found {}",
                json_kind(&other)
            ))),
        }
    }

    /// Builds a config from an already parsed key/value map.
    pub fn from_map(mut raw: Map<String, Value>) -> Result<Self, SchedulerError> {
        // diffusers: `used_defaults = config_dict.get("_use_default_values", [])`, then
        // every key named there (and the list itself) is dropped.
        if let Some(list) = raw.remove("_use_default_values") {
            let Value::Array(names) = list else {
                return Err(SchedulerError::Config(
                    "`_use_default_values` must be a list of key names".into(),
                ));
            };
            for name in names {
                if let Value::String(name) = name {
                    raw.remove(&name);
                }
            }
        }
        Ok(Self { raw })
    }

    /// The raw map (after the `_use_default_values` filtering).
    pub fn raw(&self) -> &Map<String, Value> {
        &self.raw
    }

    /// `_class_name`, the diffusers class the file was written for, if present.
    pub fn class_name(&self) -> Option<&str> {
        self.raw.get("_class_name").and_then(Value::as_str)
    }

    /// Sets (or replaces) one key, e.g. to override `timestep_spacing`.
    pub fn set(&mut self, key: &str, value: Value) {
        self.raw.insert(key.to_string(), value);
    }

    fn present(&self, key: &str) -> Option<&Value> {
        self.raw.get(key)
    }

    /// A float parameter (JSON integers are accepted, as Python accepts `1` for `1.0`).
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64, SchedulerError> {
        match self.present(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| wrong_type(key, "a number", v)),
        }
    }

    /// An optional float parameter (`None`/`null` allowed).
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, SchedulerError> {
        match self.present(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| wrong_type(key, "a number or null", v)),
        }
    }

    /// A non-negative integer parameter.
    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize, SchedulerError> {
        match self.present(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| wrong_type(key, "a non-negative integer", v)),
        }
    }

    /// An integer parameter that may be negative (`steps_offset`).
    pub fn i64_or(&self, key: &str, default: i64) -> Result<i64, SchedulerError> {
        match self.present(key) {
            None => Ok(default),
            Some(v) => v.as_i64().ok_or_else(|| wrong_type(key, "an integer", v)),
        }
    }

    /// A boolean parameter; `null` reads as false (Python truthiness of `None`).
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, SchedulerError> {
        match self.present(key) {
            None => Ok(default),
            Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(wrong_type(key, "true or false", v)),
        }
    }

    /// A string parameter.
    pub fn str_or<'a>(&'a self, key: &str, default: &'a str) -> Result<&'a str, SchedulerError> {
        match self.present(key) {
            None => Ok(default),
            Some(Value::String(s)) => Ok(s),
            Some(v) => Err(wrong_type(key, "a string", v)),
        }
    }

    /// An optional string parameter (`None`/`null` allowed).
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, SchedulerError> {
        match self.present(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(wrong_type(key, "a string or null", v)),
        }
    }

    /// An optional list of floats (`trained_betas`).
    pub fn opt_f64_list(&self, key: &str) -> Result<Option<Vec<f64>>, SchedulerError> {
        match self.present(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_f64()
                        .ok_or_else(|| wrong_type(key, "a list of numbers", v))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(wrong_type(key, "a list of numbers or null", v)),
        }
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(key: &str, expected: &str, found: &Value) -> SchedulerError {
    SchedulerError::Config(format!(
        "scheduler config key `{key}` must be {expected}, found {} ({found})",
        json_kind(found)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_default_values_are_dropped() {
        let c = SchedulerConfig::from_json(
            r#"{"timestep_spacing":"trailing","steps_offset":1,"_use_default_values":["timestep_spacing"]}"#,
        )
        .unwrap();
        assert_eq!(c.str_or("timestep_spacing", "leading").unwrap(), "leading");
        assert_eq!(c.i64_or("steps_offset", 0).unwrap(), 1);
        assert!(c.raw().get("_use_default_values").is_none());
    }

    #[test]
    fn types_and_nulls() {
        let c =
            SchedulerConfig::from_json(r#"{"a":1,"b":null,"c":"x","d":[0.1,2],"e":true,"f":"no"}"#)
                .unwrap();
        assert_eq!(c.f64_or("a", 0.0).unwrap(), 1.0);
        assert_eq!(c.opt_f64("b").unwrap(), None);
        assert!(!c.bool_or("b", true).unwrap());
        assert!(c.bool_or("e", false).unwrap());
        assert!(c.bool_or("f", false).is_err());
        assert_eq!(c.opt_f64_list("d").unwrap(), Some(vec![0.1, 2.0]));
        assert!(c.f64_or("c", 0.0).is_err());
        assert!(c.usize_or("c", 0).is_err());
        assert_eq!(c.usize_or("zz", 7).unwrap(), 7);
        assert!(SchedulerConfig::from_json("[1]").is_err());
        assert!(SchedulerConfig::from_json("{").is_err());
    }
}
