//! The order of steps for each kind of application (CONTRACT §4). The one place that knows it;
//! steps never know each other.
//!
//! | kind | steps |
//! | --- | --- |
//! | `issue` | verify-identity → confirm-phone → register (assign UID) → send-sms (password) |
//! | `block` | verify-identity → register (block) → send-sms (notification) |
//! | `unblock` | verify-identity → register (unblock) → send-sms (password) |
//! | `change_phone` | verify-identity → confirm-phone → register (change phone) → send-sms (notification) |

use crate::domain::{Kind, Status};

/// Verify identity with the MVD.
pub const VERIFY_IDENTITY: &str = "verify-identity";
/// Send a code to the phone and wait for it to be typed back.
pub const CONFIRM_PHONE: &str = "confirm-phone";
/// Change the registry.
pub const REGISTER: &str = "register";
/// Send the password or the notification by SMS.
pub const SEND_SMS: &str = "send-sms";

/// Where an application goes after a step succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Hand off to `step`, moving to `status` (if any) at the hand-off.
    Step {
        /// The next step.
        step: &'static str,
        /// The status the application takes now, if it changes.
        status: Option<Status>,
    },
    /// No step left: `completed`.
    Done,
}

/// The first step after the intake for an application of `kind`.
pub fn first_step(kind: Kind) -> &'static str {
    match kind {
        Kind::Issue | Kind::Block | Kind::Unblock | Kind::ChangePhone => VERIFY_IDENTITY,
    }
}

/// What follows `step` for an application of `kind`.
pub fn next(kind: Kind, step: &str) -> Next {
    let to = |step, status| Next::Step { step, status };
    match (step, kind.needs_phone()) {
        // The code SMS sets `awaiting_phone_confirmation` itself, once it is sent.
        (VERIFY_IDENTITY, true) => to(CONFIRM_PHONE, None),
        (VERIFY_IDENTITY, false) | (CONFIRM_PHONE, _) => to(REGISTER, Some(Status::Registering)),
        (REGISTER, _) => to(SEND_SMS, Some(Status::SendingPassword)),
        _ => Next::Done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(kind: Kind) -> Vec<&'static str> {
        let mut steps = vec![first_step(kind)];
        while let Next::Step { step, .. } = next(kind, steps[steps.len() - 1]) {
            steps.push(step);
        }
        steps
    }

    #[test]
    fn each_kind_runs_the_steps_of_the_contract() {
        assert_eq!(
            walk(Kind::Issue),
            [VERIFY_IDENTITY, CONFIRM_PHONE, REGISTER, SEND_SMS]
        );
        assert_eq!(walk(Kind::Block), [VERIFY_IDENTITY, REGISTER, SEND_SMS]);
        assert_eq!(walk(Kind::Unblock), [VERIFY_IDENTITY, REGISTER, SEND_SMS]);
        assert_eq!(
            walk(Kind::ChangePhone),
            [VERIFY_IDENTITY, CONFIRM_PHONE, REGISTER, SEND_SMS]
        );
    }
}
