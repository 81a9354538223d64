//! Turning a lab-file table into a backend's typed settings, with errors that
//! name the field (serde reports `missing field `serial`` / `unknown field
//! `seral`, expected one of …`; we prefix capability and backend).

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::capability::Capability;
use crate::error::DriverError;

/// Deserialises `params` (the lab table without its `backend` key) into `T`.
/// `T` should use `#[serde(deny_unknown_fields)]` so typos are caught.
pub fn parse<T: DeserializeOwned>(
    capability: Capability,
    backend: &str,
    params: &Map<String, Value>,
) -> Result<T, DriverError> {
    let mut table = params.clone();
    table.remove("backend");
    serde_json::from_value(Value::Object(table)).map_err(|error| DriverError::InvalidParams {
        capability,
        backend: backend.to_owned(),
        message: error.to_string(),
    })
}

/// An error about one field, worded like serde's.
pub fn invalid(
    capability: Capability,
    backend: &str,
    field: &str,
    problem: impl std::fmt::Display,
) -> DriverError {
    DriverError::InvalidParams {
        capability,
        backend: backend.to_owned(),
        message: format!("field `{field}`: {problem}"),
    }
}
