//! The route of each kind of application (CONTRACT §4) as data, and the one rule that decides
//! whether a work item may run: [`turn`]. The one place that knows the order; steps never know
//! each other, and the runtime names no step.
//!
//! | kind | hops (step, the status it runs in) |
//! | --- | --- |
//! | `issue` | verify-identity (`verifying_identity`) → confirm-phone (`verifying_identity`) → register (`registering`) → send-sms (`sending_password`) |
//! | `block` | verify-identity → register (block) → send-sms (notification) |
//! | `unblock` | verify-identity → register (unblock) → send-sms (password) |
//! | `change_phone` | as `issue`: verify-identity → confirm-phone → register (change phone) → send-sms (notification) |
//!
//! confirm-phone runs in `verifying_identity` and leaves the application waiting in
//! `awaiting_phone_confirmation` once its code SMS is out; only the right code (the
//! phone-confirmation consumer) moves it on to `registering` and hands it to register.
//!
//! **Whose turn it is.** Nothing is trusted because of the queue it came from: a work item
//! published straight to a step's queue, with any step name and attempt, must not skip a
//! step. So under the application's row lock the runtime asks [`turn`], with the status and
//! the step ledger it just read: a run is allowed only for the route's first step not in the
//! ledger (every earlier step is), in the status that step runs in. Anything else is a
//! duplicate (the step is done: a redelivery), or out of order (parked, noted, counted).

use crate::domain::{Kind, Status};
use crate::messages::Purpose;

/// Verify identity with the MVD.
pub const VERIFY_IDENTITY: &str = "verify-identity";
/// Send a code to the phone and wait for it to be typed back.
pub const CONFIRM_PHONE: &str = "confirm-phone";
/// Change the registry.
pub const REGISTER: &str = "register";
/// Send the password or the notification by SMS.
pub const SEND_SMS: &str = "send-sms";

/// Every step of every route.
pub const STEPS: [&str; 4] = [VERIFY_IDENTITY, CONFIRM_PHONE, REGISTER, SEND_SMS];

/// One hop of a route: a step and the status the application is in while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop {
    /// The step.
    pub step: &'static str,
    /// The status the step runs in; the hand-off to it sets this status.
    pub status: Status,
    /// Earlier statuses the step also accepts, moving the application to `status` first (the
    /// first hop accepts `received`, from versions whose intake left it there).
    pub also_from: &'static [Status],
}

const fn hop(step: &'static str, status: Status) -> Hop {
    Hop {
        step,
        status,
        also_from: &[],
    }
}

const VERIFY: Hop = Hop {
    also_from: &[Status::Received],
    ..hop(VERIFY_IDENTITY, Status::VerifyingIdentity)
};

/// `issue` and `change_phone`: the phone is confirmed before the registry changes.
const WITH_PHONE: [Hop; 4] = [
    VERIFY,
    hop(CONFIRM_PHONE, Status::VerifyingIdentity),
    hop(REGISTER, Status::Registering),
    hop(SEND_SMS, Status::SendingPassword),
];

/// `block` and `unblock`.
const WITHOUT_PHONE: [Hop; 3] = [
    VERIFY,
    hop(REGISTER, Status::Registering),
    hop(SEND_SMS, Status::SendingPassword),
];

/// The route of `kind`, in order.
pub fn hops(kind: Kind) -> &'static [Hop] {
    match kind {
        Kind::Issue | Kind::ChangePhone => &WITH_PHONE,
        Kind::Block | Kind::Unblock => &WITHOUT_PHONE,
    }
}

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
    hops(kind)[0].step
}

/// What follows `step` for an application of `kind`.
pub fn next(kind: Kind, step: &str) -> Next {
    let route = hops(kind);
    match route.iter().position(|h| h.step == step) {
        Some(i) if i + 1 < route.len() => {
            let (here, there) = (route[i], route[i + 1]);
            Next::Step {
                step: there.step,
                status: (there.status != here.status).then_some(there.status),
            }
        }
        _ => Next::Done,
    }
}

/// What to do with a work item, decided from the application's kind, status and ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// It is this item's turn: run the step, after moving the application to `enter` if set.
    Run {
        /// The status to move to first (the step's own, from one it also accepts).
        enter: Option<Status>,
    },
    /// The step is done already (a redelivery, a duplicate, a timer that outlived its
    /// application): nothing to do, nothing to record.
    Done,
    /// Not this item's turn: nothing may run. The sentence says why (no personal data).
    OutOfOrder(String),
}

/// Whether a work item for `step` with `purpose` may run, for an application of `kind` in
/// `status` whose step ledger holds `done` (the steps that finished, in any order).
pub fn turn(kind: Kind, status: Status, done: &[&str], step: &str, purpose: &Purpose) -> Turn {
    let route = hops(kind);
    let Some(position) = route.iter().position(|h| h.step == step) else {
        return Turn::OutOfOrder(format!(
            "step {step} is not on the route of a {} application",
            kind.as_str()
        ));
    };
    let hop = route[position];
    let is_done = |s: &str| done.contains(&s);
    // The step whose turn it is: the first of the route not in the ledger.
    let current = route.iter().find(|h| !is_done(h.step));
    if is_done(step) {
        return match purpose {
            // A redelivery or a duplicate of a step that finished.
            Purpose::Run => Turn::Done,
            // A step's own timer: the step decides (it checks its generation and deadline).
            _ if status.is_final() => Turn::Done,
            _ => Turn::Run { enter: None },
        };
    }
    if !purpose.is_run() {
        return Turn::OutOfOrder(format!(
            "a timer of step {step}, which has not run for this application"
        ));
    }
    if current.map(|h| h.step) != Some(step) {
        let missing = current.map_or("none", |h| h.step);
        return Turn::OutOfOrder(format!(
            "step {step} runs after {missing}, which has not run for this application (status {})",
            status.as_str()
        ));
    }
    if status == hop.status {
        return Turn::Run { enter: None };
    }
    if hop.also_from.contains(&status) {
        return Turn::Run {
            enter: Some(hop.status),
        };
    }
    if status == Status::Failed {
        // A second copy of the item whose failure ended the application: its dead letter
        // is the one to replay.
        return Turn::Done;
    }
    Turn::OutOfOrder(format!(
        "step {step} runs in status {}; the application is {}",
        hop.status.as_str(),
        status.as_str()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn walk(kind: Kind) -> Vec<&'static str> {
        let mut steps = vec![first_step(kind)];
        while let Next::Step { step, .. } = next(kind, steps[steps.len() - 1]) {
            steps.push(step);
        }
        steps
    }

    const KINDS: [Kind; 4] = [Kind::Issue, Kind::Block, Kind::Unblock, Kind::ChangePhone];

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

    #[test]
    fn hand_offs_set_the_status_of_the_next_hop_only_when_it_changes() {
        assert_eq!(
            next(Kind::Issue, VERIFY_IDENTITY),
            Next::Step {
                step: CONFIRM_PHONE,
                status: None
            }
        );
        assert_eq!(
            next(Kind::Block, VERIFY_IDENTITY),
            Next::Step {
                step: REGISTER,
                status: Some(Status::Registering)
            }
        );
        assert_eq!(
            next(Kind::Issue, REGISTER),
            Next::Step {
                step: SEND_SMS,
                status: Some(Status::SendingPassword)
            }
        );
        assert_eq!(next(Kind::Unblock, SEND_SMS), Next::Done);
    }

    #[test]
    fn the_forged_register_of_the_issue_is_refused_in_every_status_before_its_turn() {
        let run = Purpose::Run;
        // Still verifying: nothing after verify-identity may run.
        for step in [CONFIRM_PHONE, REGISTER, SEND_SMS] {
            assert!(matches!(
                turn(Kind::Issue, Status::VerifyingIdentity, &[], step, &run),
                Turn::OutOfOrder(_)
            ));
        }
        // Code sent, not typed back: register waits for the right code.
        let sent = [VERIFY_IDENTITY, CONFIRM_PHONE];
        for status in [Status::AwaitingPhoneConfirmation, Status::VerifyingIdentity] {
            assert!(matches!(
                turn(Kind::Issue, status, &sent, REGISTER, &run),
                Turn::OutOfOrder(_)
            ));
        }
        assert_eq!(
            turn(Kind::Issue, Status::Registering, &sent, REGISTER, &run),
            Turn::Run { enter: None }
        );
        // Another kind's step, an unknown step.
        assert!(matches!(
            turn(
                Kind::Block,
                Status::VerifyingIdentity,
                &[],
                CONFIRM_PHONE,
                &run
            ),
            Turn::OutOfOrder(_)
        ));
        assert!(matches!(
            turn(
                Kind::Block,
                Status::Registering,
                &[VERIFY_IDENTITY],
                "grant-admin",
                &run
            ),
            Turn::OutOfOrder(_)
        ));
        // A step the completed application never ran (another kind's), and one it did.
        let all = [VERIFY_IDENTITY, REGISTER, SEND_SMS];
        assert!(matches!(
            turn(Kind::Block, Status::Completed, &all, CONFIRM_PHONE, &run),
            Turn::OutOfOrder(_)
        ));
        assert_eq!(
            turn(Kind::Block, Status::Completed, &all, REGISTER, &run),
            Turn::Done
        );
    }

    #[test]
    fn legitimate_items_keep_running_redeliveries_timers_and_old_statuses() {
        let run = Purpose::Run;
        assert_eq!(
            turn(Kind::Issue, Status::Received, &[], VERIFY_IDENTITY, &run),
            Turn::Run {
                enter: Some(Status::VerifyingIdentity)
            }
        );
        let timer = Purpose::ExpireCode { generation: 1 };
        let sent = [VERIFY_IDENTITY, CONFIRM_PHONE];
        let waiting = Status::AwaitingPhoneConfirmation;
        assert_eq!(
            turn(Kind::Issue, waiting, &sent, CONFIRM_PHONE, &timer),
            Turn::Run { enter: None }
        );
        // The timer of a code outlives the application: silence, not a dead letter.
        let all = [VERIFY_IDENTITY, CONFIRM_PHONE, REGISTER, SEND_SMS];
        assert_eq!(
            turn(Kind::Issue, Status::Completed, &all, CONFIRM_PHONE, &timer),
            Turn::Done
        );
        // A timer for a code never sent is forged.
        assert!(matches!(
            turn(
                Kind::Issue,
                Status::VerifyingIdentity,
                &[VERIFY_IDENTITY],
                CONFIRM_PHONE,
                &timer
            ),
            Turn::OutOfOrder(_)
        ));
        // A second copy of the item that failed the application.
        assert_eq!(
            turn(
                Kind::Block,
                Status::Failed,
                &[VERIFY_IDENTITY],
                REGISTER,
                &run
            ),
            Turn::Done
        );
        assert!(matches!(
            turn(
                Kind::Block,
                Status::Failed,
                &[VERIFY_IDENTITY],
                SEND_SMS,
                &run
            ),
            Turn::OutOfOrder(_)
        ));
    }

    /// A work item as a forger (or a broken network) might deliver it.
    #[derive(Debug, Clone)]
    enum Event {
        /// An item for `step` (any name), asking to run or as a timer; the step, if it runs,
        /// ends with `outcome`.
        Item {
            step: &'static str,
            timer: bool,
            outcome: StepOutcome,
        },
        /// The clerk types the right code (the phone-confirmation consumer's check).
        RightCode,
    }

    #[derive(Debug, Clone, Copy)]
    enum StepOutcome {
        Next,
        Rejected,
        Transient,
    }

    fn events() -> impl Strategy<Value = Vec<Event>> {
        let step = prop::sample::select(vec![
            VERIFY_IDENTITY,
            CONFIRM_PHONE,
            REGISTER,
            SEND_SMS,
            "grant-admin",
        ]);
        let outcome = prop::sample::select(vec![
            StepOutcome::Next,
            StepOutcome::Next,
            StepOutcome::Next,
            StepOutcome::Rejected,
            StepOutcome::Transient,
        ]);
        let item = (step, any::<bool>(), outcome).prop_map(|(step, timer, outcome)| Event::Item {
            step,
            timer,
            outcome,
        });
        prop::collection::vec(prop_oneof![6 => item, 1 => Just(Event::RightCode)], 0..60)
    }

    proptest! {
        /// Random sequences of work items (any step, run or timer, duplicates, any order)
        /// against the state machine the runtime drives: side effects happen only in route
        /// order, each step at most once, each in the status it runs in.
        #[test]
        fn side_effects_only_ever_happen_in_route_order(
            kind in prop::sample::select(KINDS.to_vec()),
            events in events(),
        ) {
            let route = hops(kind);
            let mut status = Status::VerifyingIdentity;
            let mut done: Vec<&str> = Vec::new();
            let mut effects: Vec<&str> = Vec::new();
            for event in events {
                match event {
                    Event::RightCode => {
                        if status == Status::AwaitingPhoneConfirmation {
                            status = Status::Registering;
                        }
                    }
                    Event::Item { step, timer, outcome } => {
                        let purpose = if timer { Purpose::ExpireCode { generation: 1 } } else { Purpose::Run };
                        let Turn::Run { enter } = turn(kind, status, &done, step, &purpose) else {
                            continue;
                        };
                        if let Some(enter) = enter {
                            status = enter;
                        }
                        if timer {
                            // A timer only ever touches a step that ran already, never final.
                            prop_assert!(done.contains(&step));
                            prop_assert!(!status.is_final());
                            continue;
                        }
                        // A side effect: it must be the next of the route, in its status.
                        let position = route.iter().position(|h| h.step == step);
                        prop_assert_eq!(position, Some(effects.len()), "{:?} after {:?}", step, effects);
                        prop_assert_eq!(status, route[effects.len()].status);
                        match outcome {
                            StepOutcome::Transient => continue,
                            StepOutcome::Rejected => status = Status::Rejected,
                            StepOutcome::Next if step == CONFIRM_PHONE => {
                                status = Status::AwaitingPhoneConfirmation;
                            }
                            StepOutcome::Next => match next(kind, step) {
                                Next::Step { status: Some(to), .. } => status = to,
                                Next::Step { status: None, .. } => {}
                                Next::Done => status = Status::Completed,
                            },
                        }
                        effects.push(step);
                        done.push(step);
                    }
                }
            }
            let order: Vec<&str> = route.iter().map(|h| h.step).collect();
            prop_assert_eq!(&order[..effects.len()], &effects[..]);
        }
    }
}
