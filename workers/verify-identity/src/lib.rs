//! Step `verify-identity`: asks the MVD whether the applicant's data match its records
//! (CONTRACT §5.1) and turns the answer into the next step or a rejection.
//!
//! The call carries `Idempotency-Key: <application_id>`, so a retry or a duplicate delivery
//! asks the same question again harmlessly; no database effect depends on it but the decision.

pub mod mvd;

use uidflow::applications::Loaded;
use uidflow::domain::{FieldError, Reason, ReasonCode};
use uidflow::messages::WorkItem;
use uidflow::route;
use uidflow::runtime::{Outcome, Step, StepContext, StepError};
use uuid::Uuid;

use crate::mvd::{Document, MvdAnswer, MvdClient, PersonVerification};

/// The step.
pub struct VerifyIdentity {
    client: MvdClient,
}

impl VerifyIdentity {
    /// A step that calls the MVD at `base_url`.
    pub fn new(base_url: &str, client: reqwest::Client) -> Self {
        Self {
            client: MvdClient::new(base_url, client),
        }
    }
}

/// The MVD request for an application.
pub fn request_for(application: &Loaded) -> PersonVerification {
    let text = |pointer: &str| {
        application
            .payload
            .pointer(pointer)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    PersonVerification {
        request_id: Uuid::new_v4(),
        identification_number: application.identification_number.as_str().to_owned(),
        surname: text("/applicant/surname").unwrap_or_default(),
        given_name: text("/applicant/given_name").unwrap_or_default(),
        patronymic: text("/applicant/patronymic"),
        date_of_birth: text("/applicant/date_of_birth").unwrap_or_default(),
        document: Document {
            kind: text("/document/type").unwrap_or_default(),
            number: text("/document/number").unwrap_or_default(),
        },
    }
}

/// The decision for an MVD answer.
pub fn decide(answer: MvdAnswer) -> Outcome {
    match answer {
        MvdAnswer::Match => Outcome::Next,
        MvdAnswer::Mismatch { fields } => {
            let errors: Vec<FieldError> = fields
                .iter()
                .map(|field| {
                    FieldError::new(
                        application_path(field),
                        "does not match the records of the MVD",
                    )
                })
                .collect();
            Outcome::Rejected(Reason {
                code: ReasonCode::IdentityMismatch,
                detail: format!("the MVD's records differ in: {}", fields.join(", ")),
                errors,
            })
        }
        MvdAnswer::NotFound => Outcome::Rejected(Reason {
            code: ReasonCode::IdentityNotFound,
            detail: "the MVD has no record of this person".into(),
            errors: vec![],
        }),
        MvdAnswer::DocumentInvalid { reason } => Outcome::Rejected(Reason {
            code: ReasonCode::DocumentInvalid,
            detail: format!("the identity document is not valid: {reason}"),
            errors: vec![FieldError::new(
                "document",
                format!("the MVD reports the document as {reason}"),
            )],
        }),
    }
}

/// The application's dotted path of a field the MVD names.
fn application_path(field: &str) -> String {
    match field {
        "surname" | "given_name" | "patronymic" | "date_of_birth" | "identification_number" => {
            format!("applicant.{field}")
        }
        "type" | "number" => format!("document.{field}"),
        other => other.to_owned(),
    }
}

impl Step for VerifyIdentity {
    const NAME: &'static str = route::VERIFY_IDENTITY;
    type Prepared = MvdAnswer;

    async fn call(
        &self,
        _cx: &StepContext,
        application: &Loaded,
        _item: &WorkItem,
    ) -> Result<MvdAnswer, StepError> {
        let started = std::time::Instant::now();
        let result = self
            .client
            .verify(application.application_id, &request_for(application))
            .await;
        uidflow::telemetry::observe_call("mvd", started, &result);
        uidflow::breaker::note_call(&result);
        result
    }

    async fn commit(
        &self,
        _cx: &StepContext,
        _tx: &mut sqlx::PgConnection,
        _application: &Loaded,
        _item: &WorkItem,
        answer: MvdAnswer,
    ) -> Result<Outcome, StepError> {
        Ok(decide(answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_answer_becomes_its_decision() {
        assert_eq!(decide(MvdAnswer::Match), Outcome::Next);
        let Outcome::Rejected(reason) = decide(MvdAnswer::Mismatch {
            fields: vec!["surname".into(), "date_of_birth".into()],
        }) else {
            panic!("a mismatch rejects")
        };
        assert_eq!(reason.code, ReasonCode::IdentityMismatch);
        let fields: Vec<_> = reason.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["applicant.surname", "applicant.date_of_birth"]);
        let Outcome::Rejected(reason) = decide(MvdAnswer::NotFound) else {
            panic!()
        };
        assert_eq!(reason.code, ReasonCode::IdentityNotFound);
        let Outcome::Rejected(reason) = decide(MvdAnswer::DocumentInvalid {
            reason: "lost".into(),
        }) else {
            panic!()
        };
        assert_eq!(reason.code, ReasonCode::DocumentInvalid);
        assert!(reason.detail.contains("lost"));
    }
}
