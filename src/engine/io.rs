//! Reading a graph's declared inputs so callers adapt to each export's conventions
//! (input ids int32 or int64, timestep as a float scalar, a float vector or int64).

use std::path::Path;

use ort::session::Session;
use ort::value::{Outlet, TensorElementType, ValueType};

use super::runtime::EngineError;

/// What an input of a graph expects.
#[derive(Clone, Debug)]
pub struct InputSpec {
    pub name: String,
    pub element: TensorElementType,
    /// Declared dimensions; -1 where dynamic.
    pub shape: Vec<i64>,
}

/// The input called `name`, else the one at `position` (exports name them alike but
/// not always identically).
pub fn input_spec(
    session: &Session,
    model: &Path,
    name: &str,
    position: usize,
) -> Result<InputSpec, EngineError> {
    let inputs = session.inputs();
    let outlet = inputs
        .iter()
        .find(|o| o.name() == name)
        .or_else(|| inputs.get(position))
        .ok_or_else(|| {
            unexpected(
                model,
                format!("it has no input `{name}` (inputs: {})", names(inputs)),
            )
        })?;
    match outlet.dtype() {
        ValueType::Tensor { ty, shape, .. } => Ok(InputSpec {
            name: outlet.name().to_string(),
            element: *ty,
            shape: shape.to_vec(),
        }),
        other => Err(unexpected(
            model,
            format!("input `{}` is {other:?}, not a tensor", outlet.name()),
        )),
    }
}

/// The name of the output called `name`, else the first one.
pub fn output_name(session: &Session, name: &str) -> String {
    let outputs = session.outputs();
    outputs
        .iter()
        .find(|o| o.name() == name)
        .or_else(|| outputs.first())
        .map(|o| o.name().to_string())
        .unwrap_or_else(|| name.to_string())
}

fn names(outlets: &[Outlet]) -> String {
    outlets
        .iter()
        .map(|o| o.name())
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn unexpected(model: &Path, reason: String) -> EngineError {
    EngineError::Unexpected {
        model: model.to_path_buf(),
        reason,
    }
}

pub fn run_error(model: &Path, e: ort::Error) -> EngineError {
    EngineError::Run {
        model: model.to_path_buf(),
        reason: e.to_string(),
    }
}
