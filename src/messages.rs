//! Messages uidflow itself publishes: status events (`schemas/status-event.v1.json`) and the
//! hand-off to a step. Neither carries personal data: a step loads the application by id.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{Kind, Reason, Status};

/// One status change, published to `uid.events` as `application.<status>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusEvent {
    /// Unique per event; also the AMQP `message_id`, for consumers' deduplication.
    pub event_id: Uuid,
    /// The application.
    pub application_id: Uuid,
    /// Its kind, when readable.
    pub kind: Option<Kind>,
    /// Its issuing service, when valid.
    pub issuing_service: Option<String>,
    /// The new status.
    pub status: Status,
    /// The status before, `null` for the first.
    pub previous_status: Option<Status>,
    /// The step that made the change.
    pub step: String,
    /// Why, for `rejected` (and `failed`).
    pub reason: Option<Reason>,
    /// When.
    pub at: DateTime<Utc>,
}

/// The hand-off to a step: which application, and which attempt this is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkItem {
    /// The application.
    pub application_id: Uuid,
    /// The step to run.
    pub step: String,
    /// 1 for the first attempt.
    pub attempt: u32,
}
