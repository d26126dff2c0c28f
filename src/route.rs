//! The order of steps for each kind of application (CONTRACT §4). The one place that knows it;
//! steps never know each other.

use crate::domain::Kind;

/// Verify identity: every kind starts here.
pub const VERIFY_IDENTITY: &str = "verify-identity";

/// The first step after the intake for an application of `kind`.
pub fn first_step(kind: Kind) -> &'static str {
    match kind {
        Kind::Issue | Kind::Block | Kind::Unblock | Kind::ChangePhone => VERIFY_IDENTITY,
    }
}
