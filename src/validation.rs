//! Validation of an application (CONTRACT §2.1): `schemas/application.v1.json`, then the
//! domain rules the schema cannot express (CHECKSUM.md, age, names' alphabet, phone).
//!
//! Every field at fault is reported, each once, as a dotted path and a plain sentence that
//! never repeats the field's full value (the errors are stored and shown to clerks). A field
//! that already broke the schema is not checked again by the domain rules.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate};
use jsonschema::error::{TypeKind, ValidationErrorKind};
use serde_json::Value;
use uuid::Uuid;

use crate::domain::{FieldError, IdentificationNumber, Kind, Phone, validate_person_name};

/// The application schema, embedded from `schemas/`.
pub const APPLICATION_SCHEMA: &str = include_str!("../schemas/application.v1.json");

/// The phone-confirmation schema, embedded from `schemas/`.
pub const PHONE_CONFIRMATION_SCHEMA: &str = include_str!("../schemas/phone-confirmation.v1.json");

/// Minimum age of an applicant, in years (CONTRACT §2.1).
pub const MINIMUM_AGE: u32 = 14;

static APPLICATION_VALIDATOR: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let schema: Value =
        serde_json::from_str(APPLICATION_SCHEMA).expect("schemas/application.v1.json is JSON");
    jsonschema::draft202012::new(&schema).expect("schemas/application.v1.json is a valid schema")
});

/// A valid application, normalised.
#[derive(Debug, Clone)]
pub struct ValidApplication {
    /// The idempotency key of the pipeline.
    pub application_id: Uuid,
    /// What is asked.
    pub kind: Kind,
    /// The issuing service's code.
    pub issuing_service: String,
    /// The applicant's identification number, normalised (trimmed, upper-case).
    pub identification_number: IdentificationNumber,
    /// The phone, normalised to `+375…`, where the kind has one.
    pub phone: Option<Phone>,
    /// The application as received, with the identification number and phone normalised.
    pub normalized: Value,
}

/// The verdict on a JSON object that arrived as an application.
#[derive(Debug)]
pub enum Verdict {
    /// Every rule holds.
    Valid(ValidApplication),
    /// Some rule is broken; the application can still be recorded under its id.
    Invalid {
        /// The application's id.
        application_id: Uuid,
        /// The kind, when it was readable.
        kind: Option<Kind>,
        /// The issuing service's code, when it was valid.
        issuing_service: Option<String>,
        /// Every field at fault.
        errors: Vec<FieldError>,
    },
    /// Without a valid `application_id` there is no application to record.
    NoId(Vec<FieldError>),
}

/// Validates an application object as of `today` (the date in Minsk).
pub fn validate(application: &Value, today: NaiveDate) -> Verdict {
    let mut errors = schema_errors(application);
    let failed: BTreeSet<String> = errors.iter().map(|e| e.field.clone()).collect();
    let mut domain = DomainCheck {
        application,
        failed: &failed,
        errors: Vec::new(),
    };
    let validated = domain.run(today);
    errors.append(&mut domain.errors);
    dedup(&mut errors);

    let id = application
        .get("application_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok());
    let Some(application_id) = id.filter(|_| !failed.contains("application_id")) else {
        return Verdict::NoId(errors);
    };
    match validated {
        Some(valid) if errors.is_empty() => Verdict::Valid(valid),
        _ => Verdict::Invalid {
            application_id,
            kind: application
                .get("kind")
                .and_then(Value::as_str)
                .and_then(Kind::parse),
            issuing_service: application
                .pointer("/issuing_service/code")
                .and_then(Value::as_str)
                .filter(|_| {
                    !failed.contains("issuing_service.code") && !failed.contains("issuing_service")
                })
                .map(str::to_owned),
            errors,
        },
    }
}

fn dedup(errors: &mut Vec<FieldError>) {
    let mut seen = BTreeSet::new();
    errors.retain(|e| seen.insert((e.field.clone(), e.message.clone())));
}

/// Turns a JSON pointer (`/applicant/surname`) into a dotted path (`applicant.surname`).
fn dotted(pointer: &str) -> String {
    pointer
        .trim_start_matches('/')
        .replace('/', ".")
        .replace("~1", "/")
        .replace("~0", "~")
}

fn join(parent: &str, child: &str) -> String {
    match parent {
        "" => child.to_owned(),
        parent => format!("{parent}.{child}"),
    }
}

fn schema_errors(application: &Value) -> Vec<FieldError> {
    APPLICATION_VALIDATOR
        .iter_errors(application)
        .map(|error| {
            let path = dotted(&error.instance_path().to_string());
            match error.kind() {
                ValidationErrorKind::Required { property } => {
                    let name = property.as_str().unwrap_or_default();
                    FieldError::new(join(&path, name), "is required")
                }
                kind => {
                    let message = schema_message(&path, kind);
                    FieldError::new(if path.is_empty() { "$".into() } else { path }, message)
                }
            }
        })
        .collect()
}

fn schema_message(path: &str, kind: &ValidationErrorKind) -> String {
    match kind {
        ValidationErrorKind::Type { kind } => {
            let article = |name: String| match name.as_str() {
                "object" | "array" | "integer" => format!("an {name}"),
                "null" => name,
                "boolean" => "a boolean (true or false)".into(),
                _ => format!("a {name}"),
            };
            let names = match kind {
                TypeKind::Single(t) => article(t.to_string()),
                TypeKind::Multiple(set) => set
                    .iter()
                    .map(|t| article(t.to_string()))
                    .collect::<Vec<_>>()
                    .join(" or "),
            };
            format!("must be {names}")
        }
        ValidationErrorKind::Enum { options } => {
            let options = options
                .as_array()
                .map(|o| o.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            format!("must be one of: {options}")
        }
        ValidationErrorKind::Constant { .. } => match path {
            "consent_to_verification" => {
                "must be true: the applicant must consent to the check of their data with the MVD".into()
            }
            "phone_use_attested" => {
                "must be true: the applicant must confirm on the form that they use this phone number".into()
            }
            _ => "has a value that is not allowed".into(),
        },
        ValidationErrorKind::Pattern { .. } => pattern_message(path).into(),
        ValidationErrorKind::MinLength { limit } => match limit {
            1 => "must not be empty".into(),
            n => format!("must be at least {n} characters"),
        },
        ValidationErrorKind::MaxLength { limit } => format!("must be at most {limit} characters"),
        other => format!("is not valid ({})", keyword_name(other)),
    }
}

fn keyword_name(kind: &ValidationErrorKind) -> String {
    // The Debug name of the variant, without its fields (which may hold the value).
    let debug = format!("{kind:?}");
    debug
        .split([' ', '{', '('])
        .next()
        .unwrap_or("schema")
        .to_owned()
}

fn pattern_message(path: &str) -> &'static str {
    match path {
        "application_id" => "must be a UUID like 0b8f8f8e-2f3c-4c55-9a43-2f4a3b1c9d10",
        "submitted_at" => {
            "must be an RFC 3339 date-time with an offset, like 2026-11-22T10:15:00+03:00"
        }
        "issuing_service.code" => "must be 1–64 lowercase Latin letters, digits and hyphens",
        "applicant.date_of_birth" => "must be an ISO date like 1985-03-14",
        "document.number" => "must be 1–20 Latin letters and digits",
        "phone" => "may contain only digits, spaces, dashes, parentheses and a leading '+'",
        _ => "has the wrong format",
    }
}

/// The domain rules, applied to the fields that passed the schema.
struct DomainCheck<'a> {
    application: &'a Value,
    failed: &'a BTreeSet<String>,
    errors: Vec<FieldError>,
}

impl<'a> DomainCheck<'a> {
    /// The string at `path` if present and not already failed by the schema.
    fn text(&self, path: &str) -> Option<&'a str> {
        if self.failed.contains(path) {
            return None;
        }
        let pointer = format!("/{}", path.replace('.', "/"));
        self.application.pointer(&pointer).and_then(Value::as_str)
    }

    fn error(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError::new(field, message));
    }

    fn run(&mut self, today: NaiveDate) -> Option<ValidApplication> {
        if let Some(text) = self.text("submitted_at")
            && DateTime::<FixedOffset>::parse_from_rfc3339(text).is_err()
        {
            self.error(
                "submitted_at",
                "is not a real date and time (RFC 3339 with an offset)",
            );
        }
        for field in [
            "applicant.surname",
            "applicant.given_name",
            "applicant.patronymic",
        ] {
            if let Some(name) = self.text(field)
                && let Err(problem) = validate_person_name(name)
            {
                self.error(field, problem.to_string());
            }
        }
        let date_of_birth = self.date_of_birth(today);
        let number = self
            .text("applicant.identification_number")
            .and_then(|text| match IdentificationNumber::parse(text) {
                Ok(number) => Some(number),
                Err(problem) => {
                    self.error("applicant.identification_number", problem.to_string());
                    None
                }
            });
        if let (Some(number), Some(date)) = (&number, date_of_birth)
            && number.date_of_birth() != date
        {
            self.error(
                "applicant.identification_number",
                "does not match applicant.date_of_birth: the number encodes another date of birth",
            );
        }
        let phone = self
            .text("phone")
            .and_then(|text| match Phone::parse(text) {
                Ok(phone) => Some(phone),
                Err(problem) => {
                    self.error("phone", problem.to_string());
                    None
                }
            });
        let kind = self.text("kind").and_then(Kind::parse)?;
        let issuing_service = self.text("issuing_service.code")?.to_owned();
        let application_id = Uuid::parse_str(self.text("application_id")?).ok()?;
        let number = number?;
        date_of_birth?;
        if kind.needs_phone() && phone.is_none() {
            return None;
        }
        let mut normalized = minimal(self.application, kind.needs_phone());
        normalized["applicant"]["identification_number"] = Value::from(number.as_str());
        if let (Some(phone), true) = (&phone, kind.needs_phone()) {
            normalized["phone"] = Value::from(phone.as_str());
        }
        Some(ValidApplication {
            application_id,
            kind,
            issuing_service,
            identification_number: number,
            phone,
            normalized,
        })
    }

    fn date_of_birth(&mut self, today: NaiveDate) -> Option<NaiveDate> {
        let field = "applicant.date_of_birth";
        let text = self.text(field)?;
        let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") else {
            self.error(field, "is not a real calendar date");
            return None;
        };
        if date >= today {
            self.error(field, "must be in the past");
            return None;
        }
        if age_on(date, today) < MINIMUM_AGE {
            self.error(
                field,
                format!("the applicant must be at least {MINIMUM_AGE} years old"),
            );
            return None;
        }
        Some(date)
    }
}

/// The fields of a valid application that uidflow needs (docs/PRIVACY.md): what the contract
/// defines, without unknown extra fields, and without a phone where the kind needs none.
/// Duplicate detection hashes the message as received, not this.
fn minimal(application: &Value, needs_phone: bool) -> Value {
    let pick = |value: &Value, keys: &[&str]| -> Value {
        Value::Object(
            keys.iter()
                .filter_map(|k| value.get(*k).map(|v| ((*k).to_owned(), v.clone())))
                .collect(),
        )
    };
    let mut kept = pick(
        application,
        &[
            "application_id",
            "kind",
            "submitted_at",
            "consent_to_verification",
            "phone_use_attested",
        ],
    );
    kept["issuing_service"] = pick(&application["issuing_service"], &["code", "name"]);
    kept["applicant"] = pick(
        &application["applicant"],
        &[
            "surname",
            "given_name",
            "patronymic",
            "date_of_birth",
            "identification_number",
        ],
    );
    kept["document"] = pick(&application["document"], &["type", "number"]);
    if needs_phone && let Some(phone) = application.get("phone") {
        kept["phone"] = phone.clone();
    }
    kept
}

/// Full years between `born` and `on`.
pub fn age_on(born: NaiveDate, on: NaiveDate) -> u32 {
    let mut years = on.year() - born.year();
    if (on.month(), on.day()) < (born.month(), born.day()) {
        years -= 1;
    }
    years.max(0) as u32
}

/// Today's date in Minsk (UTC+3, no daylight saving), where applications are filed.
pub fn today_in_minsk() -> NaiveDate {
    let minsk = FixedOffset::east_opt(3 * 3600).expect("+03:00 is a valid offset");
    chrono::Utc::now().with_timezone(&minsk).date_naive()
}

/// Checks a phone-confirmation object against `schemas/phone-confirmation.v1.json`.
pub fn phone_confirmation_schema_is_valid(message: &Value) -> bool {
    static VALIDATOR: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
        let schema: Value = serde_json::from_str(PHONE_CONFIRMATION_SCHEMA)
            .expect("schemas/phone-confirmation.v1.json is JSON");
        jsonschema::draft202012::new(&schema).expect("phone-confirmation schema is valid")
    });
    VALIDATOR.is_valid(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()
    }

    fn valid() -> Value {
        json!({
            "application_id": "0b8f8f8e-2f3c-4c55-9a43-2f4a3b1c9d10",
            "kind": "issue",
            "submitted_at": "2026-11-22T10:15:00+03:00",
            "issuing_service": {"code": "minsk-sov-oa", "name": "Служба"},
            "applicant": {"surname": "Іваноў", "given_name": "Іван", "patronymic": "Іванавіч",
                "date_of_birth": "1985-03-14", "identification_number": " 3140385a001pb5 "},
            "document": {"type": "passport", "number": "MP1234567"},
            "phone": "8 (029) 123-45-67",
            "consent_to_verification": true,
            "phone_use_attested": true
        })
    }

    fn fields(verdict: &Verdict) -> Vec<String> {
        match verdict {
            Verdict::Invalid { errors, .. } | Verdict::NoId(errors) => {
                errors.iter().map(|e| e.field.clone()).collect()
            }
            Verdict::Valid(_) => vec![],
        }
    }

    #[test]
    fn a_valid_application_is_normalised() {
        let Verdict::Valid(app) = validate(&valid(), today()) else {
            panic!("valid")
        };
        assert_eq!(app.identification_number.as_str(), "3140385A001PB5");
        assert_eq!(app.phone.as_ref().map(Phone::as_str), Some("+375291234567"));
        assert_eq!(app.normalized["phone"], "+375291234567");
        assert_eq!(
            app.normalized["applicant"]["identification_number"],
            "3140385A001PB5"
        );
    }

    #[test]
    fn only_the_fields_uidflow_needs_are_kept() {
        let mut extra = valid();
        extra["channel"] = json!({"clerk": "Hanna Zaslauskaja"});
        extra["applicant"]["nickname"] = json!("Hanka");
        let Verdict::Valid(app) = validate(&extra, today()) else {
            panic!("valid")
        };
        assert!(app.normalized.get("channel").is_none());
        assert!(app.normalized["applicant"].get("nickname").is_none());
        assert_eq!(app.normalized["document"], extra["document"]);
        let mut block = valid();
        block["kind"] = json!("block");
        let Verdict::Valid(app) = validate(&block, today()) else {
            panic!("valid")
        };
        assert!(
            app.normalized.get("phone").is_none(),
            "block needs no phone"
        );
        assert_eq!(
            app.normalized["applicant"]["surname"],
            block["applicant"]["surname"]
        );
    }

    #[test]
    fn each_broken_rule_names_its_field() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("/kind", json!("renew"), "kind"),
            (
                "/submitted_at",
                json!("2026-11-22T10:15:00"),
                "submitted_at",
            ),
            (
                "/submitted_at",
                json!("2026-13-22T10:15:00+03:00"),
                "submitted_at",
            ),
            (
                "/issuing_service/code",
                json!("Minsk"),
                "issuing_service.code",
            ),
            ("/applicant/surname", json!("Ivanov2"), "applicant.surname"),
            ("/applicant/given_name", json!(""), "applicant.given_name"),
            (
                "/applicant/patronymic",
                json!("Іvan"),
                "applicant.patronymic",
            ),
            (
                "/applicant/date_of_birth",
                json!("1985-02-30"),
                "applicant.date_of_birth",
            ),
            (
                "/applicant/identification_number",
                json!("3140385A001PB4"),
                "applicant.identification_number",
            ),
            (
                "/applicant/identification_number",
                json!("3140385А001PB5"),
                "applicant.identification_number",
            ),
            ("/document/type", json!("driving_licence"), "document.type"),
            ("/document/number", json!("MP 123"), "document.number"),
            ("/phone", json!("+375171234567"), "phone"),
            ("/phone", json!(null), "phone"),
            (
                "/consent_to_verification",
                json!(false),
                "consent_to_verification",
            ),
            ("/phone_use_attested", json!(false), "phone_use_attested"),
        ];
        for (pointer, value, field) in cases {
            let mut application = valid();
            *application.pointer_mut(pointer).unwrap() = value.clone();
            let verdict = validate(&application, today());
            assert_eq!(
                fields(&verdict),
                vec![field.to_string()],
                "{pointer} = {value}"
            );
        }
    }

    #[test]
    fn missing_fields_are_named() {
        for (pointer, key, field) in [
            ("", "kind", "kind"),
            (
                "/applicant",
                "identification_number",
                "applicant.identification_number",
            ),
            ("/document", "number", "document.number"),
        ] {
            let mut application = valid();
            application
                .pointer_mut(pointer)
                .unwrap()
                .as_object_mut()
                .unwrap()
                .remove(key);
            assert_eq!(
                fields(&validate(&application, today())),
                vec![field.to_string()]
            );
        }
    }

    #[test]
    fn age_and_date_of_birth_consistency_are_checked() {
        let mut young = valid();
        // 10 years old on 2026-11-23, with a consistent number.
        young["applicant"]["date_of_birth"] = json!("2016-01-01");
        young["applicant"]["identification_number"] = json!(number_for("5010116M007PB"));
        let verdict = validate(&young, today());
        assert_eq!(fields(&verdict), vec!["applicant.date_of_birth"]);

        let mut mismatch = valid();
        mismatch["applicant"]["date_of_birth"] = json!("1985-03-15");
        assert_eq!(
            fields(&validate(&mismatch, today())),
            vec!["applicant.identification_number"]
        );
    }

    fn number_for(first13: &str) -> String {
        let digit = crate::domain::check_digit(first13).expect("valid characters");
        format!("{first13}{digit}")
    }

    #[test]
    fn every_error_is_listed_at_once() {
        let mut application = valid();
        application["kind"] = json!("renew");
        application["applicant"]["surname"] = json!("X1");
        application["phone"] = json!("123");
        application["consent_to_verification"] = json!(false);
        let mut found = fields(&validate(&application, today()));
        found.sort();
        assert_eq!(
            found,
            [
                "applicant.surname",
                "consent_to_verification",
                "kind",
                "phone"
            ]
        );
    }

    #[test]
    fn without_a_valid_id_there_is_no_application() {
        let mut application = valid();
        application["application_id"] = json!("not-a-uuid");
        assert!(matches!(validate(&application, today()), Verdict::NoId(_)));
        application
            .as_object_mut()
            .unwrap()
            .remove("application_id");
        assert!(
            matches!(validate(&application, today()), Verdict::NoId(ref e) if e[0].field == "application_id")
        );
    }

    #[test]
    fn block_needs_no_phone_and_ignores_unknown_fields() {
        let mut application = valid();
        application["kind"] = json!("block");
        application.as_object_mut().unwrap().remove("phone");
        application
            .as_object_mut()
            .unwrap()
            .remove("phone_use_attested");
        application["office_note"] = json!({"anything": [1, 2]});
        assert!(matches!(validate(&application, today()), Verdict::Valid(_)));
    }

    #[test]
    fn messages_never_repeat_the_full_number_or_phone() {
        let mut application = valid();
        application["applicant"]["identification_number"] = json!("3140385A001PB4");
        application["phone"] = json!("+375171234567");
        let Verdict::Invalid { errors, .. } = validate(&application, today()) else {
            panic!()
        };
        for error in errors {
            assert!(
                !error.message.contains("3140385A001PB"),
                "{}",
                error.message
            );
            assert!(!error.message.contains("171234567"), "{}", error.message);
        }
    }

    #[test]
    fn age_counts_full_years() {
        let d = |y, m, day| NaiveDate::from_ymd_opt(y, m, day).unwrap();
        assert_eq!(age_on(d(2012, 11, 23), d(2026, 11, 23)), 14);
        assert_eq!(age_on(d(2012, 11, 24), d(2026, 11, 23)), 13);
        assert_eq!(age_on(d(2008, 2, 29), d(2026, 2, 28)), 17);
    }
}
