//! Independent reference implementations of the rules of CONTRACT §2.1 and §6, CHECKSUM.md and
//! `schemas/*.json`, written from those documents (not from `src/`), for differential checks.

use chrono::{Datelike, NaiveDate};
use serde_json::Value;

/// The fixed "today" the targets validate with (the date in Minsk).
pub fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 23).expect("a real date")
}

/// The oldest date of birth of someone at least 14 on [`today`].
pub fn latest_adult_birth() -> NaiveDate {
    NaiveDate::from_ymd_opt(2012, 11, 23).expect("a real date")
}

/// Every field path an error may name: the schema's properties (errors never name unknown
/// fields: additional properties are allowed everywhere). `$` is the root.
pub const KNOWN_FIELDS: [&str; 19] = [
    "$",
    "application_id",
    "kind",
    "submitted_at",
    "issuing_service",
    "issuing_service.code",
    "issuing_service.name",
    "applicant",
    "applicant.surname",
    "applicant.given_name",
    "applicant.patronymic",
    "applicant.date_of_birth",
    "applicant.identification_number",
    "document",
    "document.type",
    "document.number",
    "phone",
    "consent_to_verification",
    "phone_use_attested",
];

pub const KINDS: [&str; 4] = ["issue", "block", "unblock", "change_phone"];
pub const DOCUMENT_TYPES: [&str; 5] = [
    "passport",
    "id_card",
    "residence_permit",
    "refugee_certificate",
    "stateless_travel_document",
];
pub const MOBILE_OPERATORS: [&str; 4] = ["25", "29", "33", "44"];

/// `issue` and `change_phone` need a phone (and its attestation).
pub fn kind_needs_phone(kind: &str) -> bool {
    matches!(kind, "issue" | "change_phone")
}

/// `^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`, as 16 bytes.
pub fn canonical_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut hex = Vec::with_capacity(32);
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
        } else {
            hex.push(char::from(c).to_digit(16)? as u8);
        }
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = pair[0] * 16 + pair[1];
    }
    Some(out)
}

/// CHECKSUM.md: values 0–9, A=10 … Z=35, weights 7, 3, 1 repeating, sum mod 10.
pub fn check_digit(first13: &[u8]) -> u8 {
    let sum: u32 = first13
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let value = if c.is_ascii_digit() {
                u32::from(c - b'0')
            } else {
                u32::from(c - b'A') + 10
            };
            value * [7, 3, 1][i % 3]
        })
        .sum();
    (sum % 10) as u8
}

/// CONTRACT §6 / CHECKSUM.md: the normalised number and the date of birth it encodes.
pub fn identification_number(input: &str) -> Option<(String, NaiveDate)> {
    let trimmed = input.trim();
    if !trimmed.is_ascii() {
        return None;
    }
    let number = trimmed.to_ascii_uppercase();
    let b = number.as_bytes();
    if b.len() != 14 {
        return None;
    }
    for (i, &c) in b.iter().enumerate() {
        let letter = matches!(i + 1, 8 | 12 | 13);
        if letter && !c.is_ascii_uppercase() || !letter && !c.is_ascii_digit() {
            return None;
        }
    }
    let century = match b[0] {
        b'1' | b'2' => 1800,
        b'3' | b'4' => 1900,
        b'5' | b'6' => 2000,
        _ => return None,
    };
    let two = |i: usize| u32::from(b[i] - b'0') * 10 + u32::from(b[i + 1] - b'0');
    let date = NaiveDate::from_ymd_opt(century + two(5) as i32, two(3), two(1))?;
    if check_digit(&b[..13]) != b[13] - b'0' {
        return None;
    }
    Some((number, date))
}

/// CONTRACT §6 and `domain::phone`'s documented forms: `+375…`, `375…`, `80…`, with spaces,
/// dashes and balanced parentheses; mobile operator codes only. The normalised `+375XXXXXXXXX`.
pub fn phone(input: &str) -> Option<String> {
    let t = input.trim();
    let mut digits = String::new();
    let mut depth = 0usize;
    for (i, c) in t.chars().enumerate() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' => {}
            '+' if i == 0 => {}
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1)?,
            _ => return None,
        }
    }
    if depth != 0 {
        return None;
    }
    let national = if t.starts_with('+') {
        digits.strip_prefix("375")?
    } else if let Some(n) = digits.strip_prefix("375") {
        n
    } else {
        digits.strip_prefix("80")?
    };
    if national.len() != 9 || !MOBILE_OPERATORS.contains(&&national[..2]) {
        return None;
    }
    Some(format!("+375{national}"))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Cyrillic,
    Latin,
    Separator,
}

fn name_class(c: char) -> Option<Class> {
    match c {
        '\u{0410}'..='\u{044F}' | 'Ё' | 'ё' | 'І' | 'і' | 'Ў' | 'ў' => Some(Class::Cyrillic),
        '×' | '÷' => None,
        'A'..='Z' | 'a'..='z' | '\u{00C0}'..='\u{017F}' => Some(Class::Latin),
        ' ' | '-' | '\'' | '\u{2019}' | '\u{02BC}' => Some(Class::Separator),
        _ => None,
    }
}

/// CONTRACT §2.1 and `domain::name`'s documentation: 1–100 characters of one script, single
/// separators between letters.
pub fn person_name(input: &str) -> bool {
    let classes: Option<Vec<Class>> = input.chars().map(name_class).collect();
    let Some(classes) = classes else {
        return false;
    };
    !classes.is_empty()
        && classes.len() <= 100
        && !(classes.contains(&Class::Cyrillic) && classes.contains(&Class::Latin))
        && classes.first() != Some(&Class::Separator)
        && classes.last() != Some(&Class::Separator)
        && !classes
            .windows(2)
            .any(|w| w[0] == Class::Separator && w[1] == Class::Separator)
}

fn all_bytes(s: &str, ok: impl Fn(u8) -> bool) -> bool {
    s.bytes().all(ok)
}

fn days_in_month(year: i32, month: u32) -> Option<u32> {
    let first = NaiveDate::from_ymd_opt(year, month, 1)?;
    let next = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)?
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)?
    };
    Some((next - first).num_days() as u32)
}

/// `YYYY-MM-DD` (the schema's pattern) that is a real calendar date.
pub fn iso_date(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let (year, month, day) = (num(0..4)? as i32, num(5..7)?, num(8..10)?);
    NaiveDate::from_ymd_opt(year, month, day)
}

/// What the reference says of `submitted_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    Valid,
    Invalid,
    /// A leap second (`:60`): RFC 3339 allows it only at the end of a leap-second minute; the
    /// reference does not decide.
    Unsure,
}

/// The schema's pattern `^YYYY-MM-DDTHH:MM:SS(.f+)?(Z|±HH:MM)$` and RFC 3339's ranges.
pub fn rfc3339(s: &str) -> Judgement {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let slice = b.get(r)?;
        slice.iter().try_fold(0u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let shape = || -> Option<Judgement> {
        let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
        if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') || b.get(10) != Some(&b'T') {
            return None;
        }
        let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
        if b.get(13) != Some(&b':') || b.get(16) != Some(&b':') {
            return None;
        }
        let mut i = 19;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == start {
                return None;
            }
        }
        let offset_ok = match b.get(i) {
            Some(b'Z') if i + 1 == b.len() => true,
            Some(b'+' | b'-') if i + 6 == b.len() => {
                let (oh, om) = (digits(i + 1..i + 3)?, digits(i + 4..i + 6)?);
                if b[i + 3] != b':' {
                    return None;
                }
                oh <= 23 && om <= 59
            }
            _ => return None,
        };
        let date_ok = (1..=12).contains(&month)
            && days_in_month(year as i32, month).is_some_and(|d| (1..=d).contains(&day));
        let time_ok = hour <= 23 && minute <= 59 && second <= 59;
        Some(
            if second == 60 && date_ok && hour <= 23 && minute <= 59 && offset_ok {
                Judgement::Unsure
            } else if date_ok && time_ok && offset_ok {
                Judgement::Valid
            } else {
                Judgement::Invalid
            },
        )
    };
    shape().unwrap_or(Judgement::Invalid)
}

/// Full years between `born` and `on`.
pub fn age(born: NaiveDate, on: NaiveDate) -> i32 {
    let mut years = on.year() - born.year();
    if (on.month(), on.day()) < (born.month(), born.day()) {
        years -= 1;
    }
    years
}

fn chars_between(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.chars().count())
}

/// CONTRACT §2.1 + `schemas/application.v1.json`: is this object a valid application as of
/// [`today`]? `Err` says the first rule broken; `Ok(Unsure)` when the reference cannot decide.
pub fn application(v: &Value) -> Result<Judgement, String> {
    let obj = v.as_object().ok_or("not an object")?;
    let string = |parent: &serde_json::Map<String, Value>, key: &str| -> Result<String, String> {
        match parent.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("{key}: not a string")),
            None => Err(format!("{key}: missing")),
        }
    };
    let object = |key: &str| -> Result<&serde_json::Map<String, Value>, String> {
        obj.get(key)
            .and_then(Value::as_object)
            .ok_or_else(|| format!("{key}: not an object"))
    };
    canonical_uuid(&string(obj, "application_id")?).ok_or("application_id: not a UUID")?;
    let kind = string(obj, "kind")?;
    if !KINDS.contains(&kind.as_str()) {
        return Err("kind: unknown".into());
    }
    let submitted = rfc3339(&string(obj, "submitted_at")?);
    if submitted == Judgement::Invalid {
        return Err("submitted_at".into());
    }
    let service = object("issuing_service")?;
    let code = string(service, "code")?;
    if !chars_between(&code, 1, 64)
        || !all_bytes(&code, |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'
        })
    {
        return Err("issuing_service.code".into());
    }
    match service.get("name") {
        None => {}
        Some(Value::String(name)) if name.chars().count() <= 200 => {}
        Some(_) => return Err("issuing_service.name".into()),
    }
    let applicant = object("applicant")?;
    for key in ["surname", "given_name"] {
        if !person_name(&string(applicant, key)?) {
            return Err(format!("applicant.{key}"));
        }
    }
    match applicant.get("patronymic") {
        None | Some(Value::Null) => {}
        Some(Value::String(p)) if person_name(p) => {}
        Some(_) => return Err("applicant.patronymic".into()),
    }
    let born = iso_date(&string(applicant, "date_of_birth")?).ok_or("applicant.date_of_birth")?;
    if born >= today() || age(born, today()) < 14 {
        return Err("applicant.date_of_birth: age".into());
    }
    let id = string(applicant, "identification_number")?;
    if !chars_between(&id, 1, 64) {
        return Err("applicant.identification_number: length".into());
    }
    let (_, encoded) =
        identification_number(&id).ok_or("applicant.identification_number: invalid")?;
    if encoded != born {
        return Err("applicant.identification_number: date of birth".into());
    }
    let document = object("document")?;
    if !DOCUMENT_TYPES.contains(&string(document, "type")?.as_str()) {
        return Err("document.type".into());
    }
    let number = string(document, "number")?;
    if !chars_between(&number, 1, 20) || !all_bytes(&number, |c| c.is_ascii_alphanumeric()) {
        return Err("document.number".into());
    }
    match obj.get("phone") {
        None | Some(Value::Null) if !kind_needs_phone(&kind) => {}
        Some(Value::String(p))
            if chars_between(p, 1, 32)
                && all_bytes(p, |c| c.is_ascii_digit() || b"+() -".contains(&c))
                && phone(p).is_some() => {}
        _ => return Err("phone".into()),
    }
    if obj.get("consent_to_verification") != Some(&Value::Bool(true)) {
        return Err("consent_to_verification".into());
    }
    match obj.get("phone_use_attested") {
        Some(Value::Bool(true)) => {}
        None | Some(Value::Bool(false)) if !kind_needs_phone(&kind) => {}
        _ => return Err("phone_use_attested".into()),
    }
    Ok(submitted)
}

/// `schemas/phone-confirmation.v1.json`.
pub fn phone_confirmation(v: &Value) -> bool {
    v.is_object()
        && v.get("application_id")
            .and_then(Value::as_str)
            .and_then(canonical_uuid)
            .is_some()
        && v.get("code")
            .and_then(Value::as_str)
            .is_some_and(|c| c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit()))
}
