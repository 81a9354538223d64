//! The one error type every backend returns, worded for the person at the bench.

use crate::capability::Capability;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("unknown backend `{backend}` for {capability}; known: {}", known.join(", "))]
    UnknownBackend {
        capability: Capability,
        backend: String,
        known: &'static [&'static str],
    },

    /// A lab-file parameter is missing, misspelt or has the wrong type.
    #[error("{capability} backend `{backend}`: {message}")]
    InvalidParams {
        capability: Capability,
        backend: String,
        message: String,
    },

    /// The lab file gives this phone no backend for the capability a step used.
    #[error("phone `{phone}` has no {capability} driver in the lab file")]
    NotConfigured {
        capability: Capability,
        phone: String,
    },

    /// The backend does not offer this action (e.g. a key without a URL).
    #[error("{0}")]
    Unsupported(String),

    /// The device answered, but said no (relay board NAK, MCU `ERR`, HTTP 4xx/5xx, command exit status).
    #[error("{0}")]
    Refused(String),

    /// The device is not there or cannot be reached (no board, no serial device, socket refused).
    #[error("{0}")]
    Unavailable(String),

    #[error("{what} timed out after {after_ms} ms")]
    TimedOut { what: String, after_ms: u64 },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl DriverError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> DriverError {
        DriverError::Io {
            context: context.into(),
            source,
        }
    }
}
