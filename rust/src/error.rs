//! Typed errors of the core. Only `py.rs` turns them into Python exceptions.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum CoreError {
    /// An input field is out of its domain; `field` names it for the user.
    Invalid { field: String, message: String },
}

impl CoreError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        CoreError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::Invalid { field, message } => write!(f, "invalid {field}: {message}"),
        }
    }
}

impl std::error::Error for CoreError {}
