//! Domain types of uidflow: the identification number (UID) with its check digit,
//! Belarusian mobile phone numbers, applicants' names, and the masking that keeps
//! personal data out of logs. Every parser validates, normalises only as documented,
//! and never converts silently; no error message contains a whole number.

mod id_number;
mod mask;
mod name;
mod phone;

pub use id_number::{IdNumberError, IdentificationNumber, check_digit};
pub use mask::{mask_identification_number, mask_phone};
pub use name::{NameError, validate_person_name};
pub use phone::{Phone, PhoneError};

mod application;
pub use application::{FieldError, Kind, Reason, ReasonCode, Status};
