//! How a check ends: `Ok(message)` passes; `Err` fails or skips with a reason.

use llmlocal::plugins::BackendError;

#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    Fail(String),
    Skip(String),
}

/// The result of one check body.
pub type Outcome = Result<String, Failure>;

impl From<BackendError> for Failure {
    fn from(err: BackendError) -> Self {
        Failure::Fail(describe(&err))
    }
}

/// A backend error with its kind spelled out, so a reader sees both.
pub fn describe(err: &BackendError) -> String {
    format!("{err} [kind: {:?}]", err.kind())
}

pub fn fail(message: impl Into<String>) -> Failure {
    Failure::Fail(message.into())
}

pub fn skip(message: impl Into<String>) -> Failure {
    Failure::Skip(message.into())
}

/// Fails the check with a formatted message unless the condition holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::outcome::fail(format!($($fmt)+)));
        }
    };
}
pub(crate) use ensure;
