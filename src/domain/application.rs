//! The vocabulary of an application's life: kinds, statuses, reasons and field errors
//! (CONTRACT §3, §4). Serialised exactly as the contract spells them.

use serde::{Deserialize, Serialize};

/// What an application asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Issue a new UID (with a temporary password).
    Issue,
    /// Block an issued UID.
    Block,
    /// Unblock a blocked UID (with a new temporary password).
    Unblock,
    /// Change the phone of a UID.
    ChangePhone,
}

impl Kind {
    /// The contract's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Issue => "issue",
            Kind::Block => "block",
            Kind::Unblock => "unblock",
            Kind::ChangePhone => "change_phone",
        }
    }

    /// Every kind.
    pub const ALL: [Kind; 4] = [Kind::Issue, Kind::Block, Kind::Unblock, Kind::ChangePhone];

    /// Parses the contract's spelling.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    /// True for the kinds that carry (and must confirm) a phone number.
    pub fn needs_phone(self) -> bool {
        matches!(self, Kind::Issue | Kind::ChangePhone)
    }
}

/// Where an application stands (CONTRACT §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Accepted by the intake, waiting for the first step.
    Received,
    /// The MVD check is running.
    VerifyingIdentity,
    /// A code was sent by SMS; waiting for the clerk to type it back.
    AwaitingPhoneConfirmation,
    /// The registry is being changed.
    Registering,
    /// The password or notification SMS is being sent.
    SendingPassword,
    /// Done.
    Completed,
    /// Refused, with a reason.
    Rejected,
    /// A technical failure outlived its retries; see the dead letters.
    Failed,
}

impl Status {
    /// The contract's spelling (also the routing key suffix of status events).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Received => "received",
            Status::VerifyingIdentity => "verifying_identity",
            Status::AwaitingPhoneConfirmation => "awaiting_phone_confirmation",
            Status::Registering => "registering",
            Status::SendingPassword => "sending_password",
            Status::Completed => "completed",
            Status::Rejected => "rejected",
            Status::Failed => "failed",
        }
    }

    /// Every status, in the order of an application's way.
    pub const ALL: [Status; 8] = [
        Status::Received,
        Status::VerifyingIdentity,
        Status::AwaitingPhoneConfirmation,
        Status::Registering,
        Status::SendingPassword,
        Status::Completed,
        Status::Rejected,
        Status::Failed,
    ];

    /// Parses the contract's spelling.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }

    /// True for `completed`, `rejected` and `failed`.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Completed | Status::Rejected | Status::Failed)
    }
}

/// Reason codes of `rejected` (CONTRACT §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// The application breaks the schema or a domain rule; `errors` lists every field.
    InvalidApplication,
    /// Reserved by the contract; not produced by v1 (see ARCHITECTURE.md).
    NotEligible,
    /// Reserved by the contract; v1 reports a missing consent as `invalid_application`.
    NoConsent,
    /// The MVD's records differ; `errors` lists the fields.
    IdentityMismatch,
    /// The MVD knows no such person.
    IdentityNotFound,
    /// The identity document is expired, lost or revoked.
    DocumentInvalid,
    /// The person already has a UID.
    AlreadyIssued,
    /// The person has no UID.
    NotIssued,
    /// The UID is already blocked.
    AlreadyBlocked,
    /// The UID is not blocked.
    NotBlocked,
    /// The phone belongs to another UID.
    PhoneInUse,
    /// The phone was not confirmed in time or in three tries.
    PhoneNotConfirmed,
    /// The same application id arrived again with different content.
    DuplicateConflict,
}

impl ReasonCode {
    /// The contract's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::InvalidApplication => "invalid_application",
            ReasonCode::NotEligible => "not_eligible",
            ReasonCode::NoConsent => "no_consent",
            ReasonCode::IdentityMismatch => "identity_mismatch",
            ReasonCode::IdentityNotFound => "identity_not_found",
            ReasonCode::DocumentInvalid => "document_invalid",
            ReasonCode::AlreadyIssued => "already_issued",
            ReasonCode::NotIssued => "not_issued",
            ReasonCode::AlreadyBlocked => "already_blocked",
            ReasonCode::NotBlocked => "not_blocked",
            ReasonCode::PhoneInUse => "phone_in_use",
            ReasonCode::PhoneNotConfirmed => "phone_not_confirmed",
            ReasonCode::DuplicateConflict => "duplicate_conflict",
        }
    }
}

/// One field at fault: a dotted path and a plain sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Dotted path, e.g. `applicant.date_of_birth`.
    pub field: String,
    /// What is wrong, for a clerk; never holds the field's full value.
    pub message: String,
}

impl FieldError {
    /// Builds a field error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why an application was rejected, as returned by the API and carried in events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// The reason code.
    pub code: ReasonCode,
    /// One sentence.
    pub detail: String,
    /// Field errors (`invalid_application`) or mismatched fields (`identity_mismatch`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_contract_spelling() {
        for text in [
            "received",
            "verifying_identity",
            "awaiting_phone_confirmation",
            "registering",
            "sending_password",
            "completed",
            "rejected",
            "failed",
        ] {
            let status = Status::parse(text).expect(text);
            assert_eq!(status.as_str(), text);
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::json!(text)
            );
        }
    }

    #[test]
    fn reason_serialises_as_the_contract_shows() {
        let reason = Reason {
            code: ReasonCode::InvalidApplication,
            detail: "1 field is invalid".into(),
            errors: vec![FieldError::new("phone", "is required")],
        };
        assert_eq!(
            serde_json::to_value(&reason).unwrap(),
            serde_json::json!({"code": "invalid_application", "detail": "1 field is invalid",
                "errors": [{"field": "phone", "message": "is required"}]})
        );
        for code in [ReasonCode::DuplicateConflict, ReasonCode::PhoneInUse] {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::json!(code.as_str())
            );
        }
    }
}
