//! Invariants of the intake's pure functions, checked by the fuzz targets in `fuzz_targets/`.
//!
//! [`check_body`] runs raw bytes through what the intake does with a delivery before any
//! database work (`intake::decode` → `validation::validate` → `intake::canonical_json`, the trace
//! derivation, `db::pg_safe_json`) and through `dead_letters::show_body` (what an operator sees
//! of a parked message), and asserts what those functions promise, not only that they return.
//!
//! A broken invariant panics with a message starting `[<gap>]`. Setting
//! `UIDFLOW_FUZZ_ALLOW=<gap>,<gap>` turns the named gaps (see [`GAPS`]) into no-ops, so a run can
//! go on past a finding that is already reported; the default checks everything.

pub mod reference;
pub mod scan;

use std::sync::OnceLock;

use base64::Engine;
use serde_json::{Map, Value};
use uidflow::consumer::{Message, trace_context};
use uidflow::dead_letters::show_body;
use uidflow::domain::{IdentificationNumber, Kind, Phone, validate_person_name};
use uidflow::intake::{self, Decoded, MAX_BODY_BYTES};
use uidflow::validation::{self, Verdict};

use reference::Judgement;

/// The invariants that can be switched off with `UIDFLOW_FUZZ_ALLOW`, each a known finding.
pub const GAPS: [&str; 5] = [
    // show_body: an object key holding an identification number or a 9+ digit run is shown.
    "json-keys",
    // show_body: a JSON number (a phone or code sent as a number) is shown as is.
    "json-numbers",
    // show_body: an identification number followed or preceded by a combining mark / joiner.
    "unicode-boundary",
    // show_body (non-UTF-8 body): a field's value is masked only up to the first invalid byte.
    "invalid-utf8-field",
    // trace_context: the application id validation uses is not the one the trace is derived from.
    "trace-id",
];

fn allowed(gap: &str) -> bool {
    static ALLOW: OnceLock<Vec<String>> = OnceLock::new();
    ALLOW
        .get_or_init(|| {
            std::env::var("UIDFLOW_FUZZ_ALLOW")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .iter()
        .any(|a| a == gap || a == "all")
}

/// Asserts `ok` unless the gap is allowed.
#[track_caller]
fn gap(name: &str, ok: bool, message: impl FnOnce() -> String) {
    debug_assert!(GAPS.contains(&name));
    if !ok && !allowed(name) {
        panic!("[{name}] {}", message());
    }
}

/// What [`check_object`] found, for the structured target.
pub struct Summary {
    pub verdict: Verdict,
    pub reference: Result<Judgement, String>,
}

/// Everything about one delivery body.
pub fn check_body(data: &[u8]) -> Option<Summary> {
    let decoded = intake::decode(data);
    check_decode(data, &decoded);
    check_show_body(data);
    if data.len() % 64 == 1 {
        check_size_limit(data, &decoded);
    }
    let Decoded::Object(object) = decoded else {
        return None;
    };
    let summary = check_object(&object);
    check_trace(data, &object, &summary.verdict);
    Some(summary)
}

/// `decode`: size, then UTF-8, then JSON, then object; an object is exactly what the body holds.
fn check_decode(data: &[u8], decoded: &Decoded) {
    let parsed = (data.len() <= MAX_BODY_BYTES && std::str::from_utf8(data).is_ok())
        .then(|| serde_json::from_slice::<Value>(data).ok())
        .flatten();
    match decoded {
        Decoded::Object(value) => {
            assert!(value.is_object(), "decode returned a non-object");
            assert_eq!(Some(value), parsed.as_ref(), "decode changed the object");
        }
        Decoded::Malformed(why) => {
            assert!(
                !matches!(parsed, Some(Value::Object(_))),
                "a JSON object under the size limit was called malformed: {why}"
            );
            assert!(!why.trim().is_empty(), "a malformed body without a reason");
            assert_no_personal_data("decode's reason", why.as_bytes());
        }
    }
}

/// The limit is on bytes: trailing whitespace up to the limit changes nothing, one more byte
/// makes any body malformed.
fn check_size_limit(data: &[u8], decoded: &Decoded) {
    if data.len() > MAX_BODY_BYTES {
        return;
    }
    let mut padded = data.to_vec();
    padded.resize(MAX_BODY_BYTES, b' ');
    let at_limit = intake::decode(&padded);
    assert_eq!(
        matches!(decoded, Decoded::Object(_)),
        matches!(at_limit, Decoded::Object(_)),
        "trailing spaces up to the limit changed the outcome"
    );
    padded.push(b' ');
    match intake::decode(&padded) {
        Decoded::Malformed(why) => assert!(why.contains("65536"), "{why}"),
        Decoded::Object(_) => panic!("a body over the limit was parsed"),
    }
}

/// The example numbers `domain::phone`'s messages give (`PhoneError::UnknownPrefix`).
const PHONE_EXAMPLES: [&str; 2] = ["+375 29 123-45-67", "8 029 123-45-67"];

/// Text of an error or reason must not repeat an identification number or a phone (other than
/// the documented examples).
#[track_caller]
fn assert_no_personal_data(what: &str, text: &[u8]) {
    let mut text = text.to_vec();
    for example in PHONE_EXAMPLES {
        while let Some(at) = find(&text, example.as_bytes()) {
            text.splice(at..at + example.len(), *b"<example>");
        }
    }
    let text = &text[..];
    let ids = match std::str::from_utf8(text) {
        Ok(text) => scan::id_numbers(text),
        Err(_) => scan::id_numbers_in_bytes(text),
    };
    assert!(
        ids.is_empty(),
        "{what} holds an identification number: {:?}",
        String::from_utf8_lossy(text)
    );
    assert!(
        scan::longest_digit_run(text) < scan::PHONE_DIGITS,
        "{what} holds a phone-like run of digits: {:?}",
        String::from_utf8_lossy(text)
    );
}

/// Everything about one JSON object that arrived as an application.
pub fn check_object(object: &Value) -> Summary {
    check_canonical_json(object);
    check_pg_safe(object);
    check_domain_parsers(object);
    assert_eq!(
        validation::phone_confirmation_schema_is_valid(object),
        reference::phone_confirmation(object),
        "phone_confirmation_schema_is_valid disagrees with schemas/phone-confirmation.v1.json"
    );
    let verdict = validation::validate(object, reference::today());
    let reference = reference::application(object);
    check_verdict(object, &verdict, &reference);
    Summary { verdict, reference }
}

/// `canonical_json` (what duplicate detection hashes): deterministic, independent of key order and of the serialisation
/// (re-serialised, pretty-printed), and sensitive to content.
fn check_canonical_json(object: &Value) {
    let hash = intake::canonical_json(object);
    assert_eq!(
        hash,
        intake::canonical_json(&object.clone()),
        "not deterministic"
    );
    let text = serde_json::to_string(object).expect("serialises");
    let reparsed: Value = serde_json::from_str(&text).expect("its own serialisation parses");
    assert_eq!(
        hash,
        intake::canonical_json(&reparsed),
        "changed by a re-serialisation: {text}"
    );
    let pretty: Value =
        serde_json::from_str(&serde_json::to_string_pretty(object).expect("serialises"))
            .expect("parses");
    assert_eq!(
        hash,
        intake::canonical_json(&pretty),
        "changed by pretty-printing"
    );
    assert_eq!(
        hash,
        intake::canonical_json(&reversed(object)),
        "depends on key order"
    );
    let mut other = object.clone();
    if let Some(map) = other.as_object_mut()
        && !map.contains_key("\u{1}fuzz")
    {
        map.insert("\u{1}fuzz".into(), Value::Null);
        assert_ne!(
            hash,
            intake::canonical_json(&other),
            "blind to an added field"
        );
    }
}

/// The same value built with every object's keys inserted in reverse order.
fn reversed(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map.iter().rev() {
                out.insert(k.clone(), reversed(v));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(reversed).collect()),
        other => other.clone(),
    }
}

/// `pg_safe_json`: no NUL left in any string or key; nothing changed when there was none.
fn check_pg_safe(object: &Value) {
    fn has_nul(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().any(has_nul),
            Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            _ => false,
        }
    }
    let safe = uidflow::db::pg_safe_json(object);
    assert!(!has_nul(&safe), "pg_safe_json left a NUL");
    if !has_nul(object) {
        assert_eq!(&safe, object, "pg_safe_json changed a value without NUL");
    }
}

/// The domain parsers on the fields they are meant for, against the reference.
fn check_domain_parsers(object: &Value) {
    if let Some(text) = object
        .pointer("/applicant/identification_number")
        .and_then(Value::as_str)
    {
        let parsed = IdentificationNumber::parse(text);
        let expected = reference::identification_number(text);
        assert_eq!(
            parsed
                .as_ref()
                .ok()
                .map(|n| (n.as_str().to_owned(), n.date_of_birth())),
            expected,
            "IdentificationNumber::parse disagrees with CHECKSUM.md on {text:?}: {parsed:?}"
        );
        match parsed {
            Ok(number) => {
                let masked = number.masked();
                assert_eq!(
                    masked,
                    format!("{}***{}", &number.as_str()[..8], &number.as_str()[11..])
                );
                assert!(
                    !format!("{number:?}").contains(number.as_str()),
                    "Debug shows the number"
                );
            }
            Err(error) => assert_no_personal_data(
                "an identification-number error",
                error.to_string().as_bytes(),
            ),
        }
    }
    if let Some(text) = object.get("phone").and_then(Value::as_str) {
        let parsed = Phone::parse(text);
        assert_eq!(
            parsed.as_ref().ok().map(|p| p.as_str().to_owned()),
            reference::phone(text),
            "Phone::parse disagrees with CONTRACT §6 on {text:?}"
        );
        match parsed {
            Ok(phone) => assert!(
                !format!("{phone:?}").contains(&phone.as_str()[4..]),
                "Debug shows the phone"
            ),
            Err(error) => assert_no_personal_data("a phone error", error.to_string().as_bytes()),
        }
    }
    for key in ["surname", "given_name", "patronymic"] {
        if let Some(text) = object
            .get("applicant")
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
        {
            assert_eq!(
                validate_person_name(text).is_ok(),
                reference::person_name(text),
                "validate_person_name disagrees with the documented rule on {text:?}"
            );
        }
    }
}

/// The verdict against the reference and against its own promises.
fn check_verdict(object: &Value, verdict: &Verdict, reference: &Result<Judgement, String>) {
    let errors = match verdict {
        Verdict::Valid(_) => &[][..],
        Verdict::Invalid { errors, .. } | Verdict::NoId(errors) => &errors[..],
    };
    let mut seen = std::collections::BTreeSet::new();
    for error in errors {
        assert!(
            !error.field.is_empty() && !error.message.trim().is_empty(),
            "empty error: {error:?}"
        );
        assert!(
            reference::KNOWN_FIELDS.contains(&error.field.as_str()),
            "an error names a field the schema does not have: {error:?}"
        );
        assert!(
            seen.insert((&error.field, &error.message)),
            "a repeated error: {error:?}"
        );
        assert_no_personal_data("a validation message", error.message.as_bytes());
        // A value with six digits or more is too specific to be in a message by chance.
        for pointer in ["/applicant/identification_number", "/phone"] {
            if let Some(value) = object.pointer(pointer).and_then(Value::as_str)
                && value.bytes().filter(u8::is_ascii_digit).count() >= 6
            {
                assert!(
                    !scan::contains_ignore_ascii_case(
                        error.message.as_bytes(),
                        value.trim().as_bytes()
                    ),
                    "a validation message repeats {pointer}: {error:?}"
                );
            }
        }
    }
    let id = object
        .get("application_id")
        .and_then(Value::as_str)
        .and_then(reference::canonical_uuid);
    match verdict {
        Verdict::NoId(errors) => {
            assert!(
                id.is_none(),
                "NoId for an object with a canonical application_id"
            );
            assert!(
                errors.iter().any(|e| e.field == "application_id"),
                "NoId without an application_id error: {errors:?}"
            );
        }
        Verdict::Invalid {
            application_id,
            kind,
            issuing_service,
            errors,
        } => {
            assert_eq!(
                Some(*application_id.as_bytes()),
                id,
                "Invalid under another id"
            );
            assert!(!errors.is_empty(), "Invalid without errors");
            let raw_kind = object.get("kind").and_then(Value::as_str);
            assert_eq!(
                *kind,
                raw_kind.and_then(Kind::parse),
                "Invalid with another kind"
            );
            if let Some(kind) = kind {
                assert_eq!(Some(kind.as_str()), raw_kind);
                assert!(reference::KINDS.contains(&kind.as_str()));
            }
            if let Some(code) = issuing_service {
                assert_eq!(
                    object
                        .pointer("/issuing_service/code")
                        .and_then(Value::as_str),
                    Some(code.as_str())
                );
                assert!(
                    !code.is_empty()
                        && code.len() <= 64
                        && code
                            .bytes()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'),
                    "Invalid names an issuing service whose code breaks the pattern: {code:?}"
                );
            }
            assert!(
                !matches!(reference, Ok(Judgement::Valid)),
                "rejected a valid application: {errors:?}\n{object}"
            );
        }
        Verdict::Valid(valid) => {
            assert_eq!(
                Some(*valid.application_id.as_bytes()),
                id,
                "Valid under another id"
            );
            match reference {
                Ok(_) => {}
                Err(why) => panic!("accepted an invalid application ({why}):\n{object}"),
            }
            check_valid(object, valid);
        }
    }
    if let (Ok(Judgement::Valid), Verdict::NoId(errors)) = (reference, verdict) {
        panic!("NoId for a valid application: {errors:?}");
    }
}

/// A valid application: its normalised form is the input with the identification number and the
/// phone normalised, and it validates again to the same thing.
fn check_valid(object: &Value, valid: &validation::ValidApplication) {
    let raw_id = object["applicant"]["identification_number"]
        .as_str()
        .expect("checked");
    let (number, born) = reference::identification_number(raw_id).expect("checked");
    assert_eq!(valid.identification_number.as_str(), number);
    assert_eq!(valid.identification_number.date_of_birth(), born);
    assert_eq!(Some(valid.kind.as_str()), object["kind"].as_str());
    assert_eq!(
        Some(valid.issuing_service.as_str()),
        object["issuing_service"]["code"].as_str()
    );
    let phone = object
        .get("phone")
        .and_then(Value::as_str)
        .map(|p| reference::phone(p).expect("checked"));
    assert_eq!(valid.phone.as_ref().map(|p| p.as_str().to_owned()), phone);
    if valid.kind.needs_phone() {
        assert!(
            valid.phone.is_some(),
            "a {} without a phone",
            valid.kind.as_str()
        );
    }
    let mut expected = object.clone();
    expected["applicant"]["identification_number"] = Value::from(number.as_str());
    if let Some(phone) = &phone {
        expected["phone"] = Value::from(phone.as_str());
    }
    assert_eq!(
        valid.normalized, expected,
        "normalized is not the input with its number and phone normalised"
    );
    match validation::validate(&valid.normalized, reference::today()) {
        Verdict::Valid(again) => {
            assert_eq!(again.application_id, valid.application_id);
            assert_eq!(again.kind, valid.kind);
            assert_eq!(again.issuing_service, valid.issuing_service);
            assert_eq!(again.identification_number, valid.identification_number);
            assert_eq!(again.phone, valid.phone);
            assert_eq!(
                again.normalized, valid.normalized,
                "normalisation is not idempotent"
            );
        }
        other => panic!("the normalised application is not valid: {other:?}"),
    }
}

/// The trace of a delivery without `traceparent` and `message_id` is the application's
/// (ARCHITECTURE "Tracing": trace id = the application id's 16 bytes, except for the nil UUID).
fn check_trace(data: &[u8], object: &Value, verdict: &Verdict) {
    let id = match verdict {
        Verdict::Valid(valid) => valid.application_id,
        Verdict::Invalid { application_id, .. } => *application_id,
        Verdict::NoId(_) => return,
    };
    // Documented in `TraceContext::for_application`: the nil UUID is not a valid trace id.
    if id.is_nil() {
        return;
    }
    let message = Message {
        body: data.to_vec(),
        routing_key: "application".into(),
        message_id: None,
        content_type: None,
        headers: Value::Object(Map::new()),
        redelivered: false,
        received_at: chrono::DateTime::UNIX_EPOCH,
    };
    let context = trace_context(&message);
    gap("trace-id", context.trace_id == *id.as_bytes(), || {
        format!("the delivery's trace is not application {id}'s: {object}")
    });
}

/// `show_body`: the encoding is what the bytes are; `raw_base64` (the body itself) only when
/// nothing was masked; JSON keeps its shape; no identification number, phone-like run of
/// digits, or name / document number / code / password field value is left.
pub fn check_show_body(data: &[u8]) -> uidflow::dead_letters::Body {
    let body = show_body(data);
    assert_eq!(body.bytes, data.len());
    let text = std::str::from_utf8(data).ok();
    let json = text.and_then(|t| serde_json::from_str::<Value>(t).ok());
    let expected = match (&text, &json) {
        (_, Some(_)) => "json",
        (Some(_), None) => "text",
        (None, _) => "base64",
    };
    assert_eq!(body.encoding, expected, "wrong encoding");
    assert_eq!(
        body.raw_base64.is_some(),
        !body.masked,
        "raw_base64 offered although masked"
    );
    if let Some(raw) = &body.raw_base64 {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(raw)
            .expect("base64");
        assert_eq!(raw, data, "raw_base64 is not the body");
    }
    match (body.encoding, &json) {
        ("json", Some(parsed)) => {
            assert_eq!(
                body.masked,
                body.content != *parsed,
                "masked flag disagrees with the content"
            );
            check_masked_json(parsed, &body.content, None);
        }
        ("text", _) => {
            let shown = body.content.as_str().expect("text content is a string");
            assert_eq!(
                body.masked,
                shown.as_bytes() != data,
                "masked flag disagrees with the content"
            );
            check_masked_text(shown, true);
        }
        _ => {
            let shown = base64::engine::general_purpose::STANDARD
                .decode(body.content.as_str().expect("base64 content is a string"))
                .expect("base64 content decodes");
            assert_eq!(
                body.masked,
                shown != data,
                "masked flag disagrees with the content"
            );
            check_masked_bytes(&shown);
        }
    }
    body
}

const NAME_KEYS: [&str; 3] = ["surname", "given_name", "patronymic"];
const SECRET_KEYS: [&str; 3] = ["number", "code", "password"];

/// `shown` is `parsed` with strings masked: same shape; keys kept unless they hold personal
/// data (then masked); numbers kept unless a phone or a secret (then `"***"`).
fn check_masked_json(parsed: &Value, shown: &Value, key: Option<&str>) {
    let leaks = |text: &str| {
        !scan::id_numbers(text).is_empty()
            || scan::longest_digit_run(text.as_bytes()) >= scan::PHONE_DIGITS
    };
    match (parsed, shown) {
        (Value::Object(a), Value::Object(b)) => {
            for k in b.keys() {
                assert!(!leaks(k), "a key is shown unmasked: {k:?}");
            }
            for (k, v) in a {
                // A key that is gone was masked: `show_body` masks by shape (no checksum), so
                // it may mask more than `leaks` finds, never less (checked above).
                if let Some(w) = b.get(k) {
                    check_masked_json(v, w, Some(k));
                }
            }
        }
        (Value::Number(a), Value::String(masked)) if masked == "***" => {
            let secret = key.is_some_and(|k| SECRET_KEYS.contains(&k));
            assert!(
                secret || leaks(&a.to_string()),
                "a harmless number was masked ({key:?}: {a})"
            );
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "masking changed an array");
            for (x, y) in a.iter().zip(b) {
                check_masked_json(x, y, key);
            }
        }
        (Value::String(original), Value::String(masked)) => {
            // A value with fewer than two letters or digits may survive inside its mask
            // (`"A"` → `"A***"`, an already masked `"***"`).
            if key.is_some_and(|k| NAME_KEYS.contains(&k) || SECRET_KEYS.contains(&k))
                && original.chars().filter(|c| c.is_alphanumeric()).count() >= 2
            {
                assert!(
                    !masked.contains(original.as_str()),
                    "{key:?} shown unmasked: {masked:?}"
                );
            }
            check_masked_text(masked, false);
        }
        (Value::Number(a), Value::Number(b)) => {
            assert_eq!(a, b, "masking changed a number");
            // An integer is what a phone or a code sent as a JSON number looks like.
            if a.is_i64() || a.is_u64() {
                let text = a.to_string();
                let secret = key.is_some_and(|k| SECRET_KEYS.contains(&k));
                gap(
                    "json-numbers",
                    !secret && scan::longest_digit_run(text.as_bytes()) < scan::PHONE_DIGITS,
                    || format!("a number is shown unmasked ({key:?}: {text})"),
                );
            }
        }
        (a, b) => assert_eq!(a, b, "masking changed a value"),
    }
}

/// Masked text: no identification number on its own, no run of 9+ digits; in raw (non-JSON)
/// text, every `"<name, number, code or password>": "` is followed by `***` and the end of the
/// value.
fn check_masked_text(shown: &str, raw: bool) {
    let ids = scan::id_numbers(shown);
    if !ids.is_empty() {
        // The masking pattern's word boundary is Unicode's (letters, digits, marks, connector
        // punctuation, joiners); ours ignores marks and joiners. Tell the two apart.
        let glued = ids.iter().all(|id| glued_to_mark(shown, id));
        let message = || format!("an identification number is shown: {shown:?}");
        if glued {
            gap("unicode-boundary", false, message);
        } else {
            panic!("{}", message());
        }
    }
    assert!(
        scan::longest_digit_run(shown.as_bytes()) < scan::PHONE_DIGITS,
        "a phone-like run of digits is shown: {shown:?}"
    );
    if raw {
        check_fields_masked(shown.as_bytes(), false);
    }
}

/// True if every occurrence of `id` in `text` touches a combining mark, connector punctuation
/// or a joiner (characters that regex's `\w` holds and `char::is_alphanumeric` does not).
fn glued_to_mark(text: &str, id: &str) -> bool {
    let upper = text.to_ascii_uppercase();
    let mut any = false;
    for (start, _) in upper.match_indices(id) {
        any = true;
        let before = text[..start].chars().next_back();
        let after = text[start + id.len()..].chars().next();
        let odd =
            |c: Option<char>| c.is_some_and(|c| regex_word(c) && !c.is_alphanumeric() && c != '_');
        if !odd(before) && !odd(after) {
            return false;
        }
    }
    any
}

/// `\w` of the `regex` crate (Unicode): letters, marks, decimal digits, connector punctuation,
/// joiners.
fn regex_word(c: char) -> bool {
    static WORD: OnceLock<regex::Regex> = OnceLock::new();
    let mut buffer = [0u8; 4];
    WORD.get_or_init(|| regex::Regex::new(r"^\w$").expect("a valid pattern"))
        .is_match(c.encode_utf8(&mut buffer))
}

fn check_masked_bytes(shown: &[u8]) {
    assert!(
        scan::id_numbers_in_bytes(shown).is_empty(),
        "an identification number is shown: {:?}",
        String::from_utf8_lossy(shown)
    );
    assert!(
        scan::longest_digit_run(shown) < scan::PHONE_DIGITS,
        "a phone-like run of digits is shown: {:?}",
        String::from_utf8_lossy(shown)
    );
    check_fields_masked(shown, true);
}

/// Every `"<field>"\s*:\s*"` is followed by `***` and then `"` or the end.
fn check_fields_masked(shown: &[u8], bytes: bool) {
    for key in NAME_KEYS.iter().chain(&SECRET_KEYS) {
        let quoted = format!("\"{key}\"");
        let mut from = 0;
        while let Some(at) = find(&shown[from..], quoted.as_bytes()) {
            let mut i = from + at + quoted.len();
            from = i;
            i = skip_space(shown, i, bytes);
            if shown.get(i) != Some(&b':') {
                continue;
            }
            i = skip_space(shown, i + 1, bytes);
            if shown.get(i) != Some(&b'"') {
                continue;
            }
            let value = &shown[i + 1..];
            let ok = value.starts_with(b"***") && matches!(value.get(3), None | Some(b'"'));
            let message = || format!("{key} not masked: {:?}", String::from_utf8_lossy(shown));
            if bytes {
                gap("invalid-utf8-field", ok, message);
            } else {
                assert!(ok, "{}", message());
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Skips whitespace: Unicode whitespace in text, ASCII whitespace in bytes (a subset of what
/// the masking pattern's `\s` skips, so this never finds a field the pattern could not).
fn skip_space(s: &[u8], mut i: usize, bytes: bool) -> usize {
    if bytes {
        while s.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        return i;
    }
    let text = std::str::from_utf8(&s[i..]).unwrap_or("");
    for c in text.chars() {
        if !c.is_whitespace() {
            break;
        }
        i += c.len_utf8();
    }
    i
}
