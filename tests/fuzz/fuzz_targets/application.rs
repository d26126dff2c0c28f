//! Structured inputs: applications built valid by construction (every accepted form of the
//! identification number, phone, names, kinds and optional fields, unknown extra fields), then
//! broken in up to three known ways. Random bytes rarely get past JSON parsing; these reach
//! every rule of the validator.
//!
//! Oracle: with no breakage the verdict is `Valid` with exactly the expected normalised id,
//! kind, service, number and phone; with breakage it is `Invalid` (or `NoId` when the
//! application id was broken), every error names a field that was broken, and with a single
//! breakage at least one error names it. The body then goes through all of `check_body`.
#![no_main]

use arbitrary::{Result, Unstructured};
use chrono::{Datelike, NaiveDate};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use uidflow::validation::Verdict;
use uidflow_fuzz::reference::{self, DOCUMENT_TYPES, KINDS, MOBILE_OPERATORS, kind_needs_phone};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
});

const ID: &str = "applicant.identification_number";
const DOB: &str = "applicant.date_of_birth";

fn run(u: &mut Unstructured) -> Result<()> {
    // The first bytes decide what to break, the rest build the application: generation reads
    // until the data runs out, so a plan read after it would nearly always be "nothing".
    let mut plan = Unstructured::new(u.bytes(u.len().min(24))?);
    let plan = &mut plan;
    if plan.ratio(1, 10)? {
        return phone_confirmation(u);
    }
    let count = *plan.choose(&[0, 0, 1, 1, 1, 2, 3])?;
    let mut app = Application::generate(u)?;
    let mut broken: Vec<Vec<&'static str>> = Vec::new();
    for _ in 0..count {
        broken.push(app.break_one(plan)?);
    }
    let body = if plan.ratio(1, 4)? {
        serde_json::to_vec_pretty(&app.value)
    } else {
        serde_json::to_vec(&app.value)
    }
    .expect("serialises");
    let summary = uidflow_fuzz::check_body(&body).expect("an object");
    let allowed: Vec<&str> = broken.iter().flatten().copied().collect();
    let id_broken = allowed.contains(&"application_id");
    match &summary.verdict {
        Verdict::Valid(valid) => {
            assert!(
                broken.is_empty(),
                "accepted although {allowed:?} broken:\n{}",
                app.value
            );
            assert_eq!(valid.application_id.as_bytes(), &app.uuid);
            assert_eq!(valid.kind.as_str(), app.kind);
            assert_eq!(valid.issuing_service, app.service);
            assert_eq!(valid.identification_number.as_str(), app.number);
            assert_eq!(
                valid.phone.as_ref().map(|p| p.as_str()),
                app.phone.as_deref()
            );
            assert_eq!(summary.reference, Ok(reference::Judgement::Valid));
        }
        Verdict::Invalid {
            application_id,
            errors,
            ..
        } => {
            assert!(
                !broken.is_empty(),
                "rejected a valid application: {errors:?}\n{}",
                app.value
            );
            assert!(!id_broken, "Invalid although the application id was broken");
            assert_eq!(application_id.as_bytes(), &app.uuid);
            check_fields(&broken, &allowed, errors, &app.value);
        }
        Verdict::NoId(errors) => {
            assert!(
                id_broken,
                "NoId although the application id was intact: {errors:?}\n{}",
                app.value
            );
            check_fields(&broken, &allowed, errors, &app.value);
        }
    }
    if broken.is_empty() {
        let shown = uidflow::dead_letters::show_body(&body);
        assert!(shown.masked, "an application's body was shown unmasked");
    }
    Ok(())
}

fn check_fields(
    broken: &[Vec<&'static str>],
    allowed: &[&str],
    errors: &[uidflow::domain::FieldError],
    value: &Value,
) {
    for error in errors {
        assert!(
            allowed.contains(&error.field.as_str()),
            "an error on a field that was not broken ({allowed:?}): {error:?}\n{value}"
        );
    }
    if let [only] = broken {
        assert!(
            errors.iter().any(|e| only.contains(&e.field.as_str())),
            "no error names the broken field {only:?}: {errors:?}\n{value}"
        );
    }
}

fn phone_confirmation(u: &mut Unstructured) -> Result<()> {
    let (uuid_text, _) = uuid(u)?;
    let code: String = (0..6).map(|_| digit(u)).collect::<Result<_>>()?;
    let mut object = Map::new();
    object.insert("application_id".into(), Value::from(uuid_text));
    object.insert("code".into(), Value::from(code));
    extras(u, &mut object)?;
    let mut valid = true;
    if u.ratio(1, 2)? {
        valid = false;
        let broken = match u.int_in_range(0..=5)? {
            0 => Value::from("12345"),
            1 => Value::from("1234567"),
            2 => Value::from(123456),
            3 => Value::from("12345a"),
            4 => Value::from("123456\n"),
            _ => Value::Null,
        };
        object.insert("code".into(), broken);
    }
    let value = Value::Object(object);
    assert_eq!(
        uidflow::validation::phone_confirmation_schema_is_valid(&value),
        valid,
        "{value}"
    );
    uidflow_fuzz::check_body(&serde_json::to_vec(&value).expect("serialises"));
    Ok(())
}

struct Application {
    value: Value,
    uuid: [u8; 16],
    kind: &'static str,
    service: String,
    /// The identification number, normalised.
    number: String,
    /// The phone, normalised, when the application has one.
    phone: Option<String>,
}

fn digit(u: &mut Unstructured) -> Result<char> {
    Ok(char::from(b'0' + u.int_in_range(0..=9)?))
}

fn uuid(u: &mut Unstructured) -> Result<(String, [u8; 16])> {
    let bytes: [u8; 16] = u.arbitrary()?;
    let upper = u.ratio(1, 4)?;
    let mut text = String::new();
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text.push('-');
        }
        let hex = format!("{b:02x}");
        text.push_str(&if upper { hex.to_ascii_uppercase() } else { hex });
    }
    Ok((text, bytes))
}

/// A date between `from` and `to`, inclusive.
fn date_between(u: &mut Unstructured, from: NaiveDate, to: NaiveDate) -> Result<NaiveDate> {
    let days = (to - from).num_days();
    Ok(from + chrono::Duration::days(u.int_in_range(0..=days)?))
}

/// An identification number (normalised) encoding `born`; `None` outside 1800–2099.
fn number_for(u: &mut Unstructured, born: NaiveDate) -> Result<Option<String>> {
    let first = match born.year() {
        1800..=1899 => *b"12",
        1900..=1999 => *b"34",
        2000..=2099 => *b"56",
        _ => return Ok(None),
    };
    let mut n = vec![*u.choose(&first)?];
    n.extend(
        format!(
            "{:02}{:02}{:02}",
            born.day(),
            born.month(),
            born.year() % 100
        )
        .bytes(),
    );
    n.push(b'A' + u.int_in_range(0..=25)?);
    for _ in 0..3 {
        n.push(b'0' + u.int_in_range(0..=9)?);
    }
    for _ in 0..2 {
        n.push(b'A' + u.int_in_range(0..=25)?);
    }
    n.push(b'0' + reference::check_digit(&n));
    Ok(Some(String::from_utf8(n).expect("ASCII")))
}

fn adult_birth(u: &mut Unstructured) -> Result<NaiveDate> {
    let from = NaiveDate::from_ymd_opt(1800, 1, 1).expect("date");
    let recent = NaiveDate::from_ymd_opt(1930, 1, 1).expect("date");
    // Mostly people alive today, sometimes anyone since 1800.
    let start = if u.ratio(1, 8)? { from } else { recent };
    date_between(u, start, reference::latest_adult_birth())
}

/// The number as a clerk might type it: any case, ASCII whitespace around.
fn present_number(u: &mut Unstructured, number: &str) -> Result<String> {
    let mut text = String::new();
    let pad = |u: &mut Unstructured, text: &mut String| -> Result<()> {
        for _ in 0..u.int_in_range(0..=3)? {
            text.push(*u.choose(&[' ', '\t', '\n', '\r'])?);
        }
        Ok(())
    };
    pad(u, &mut text)?;
    let lower = u.int_in_range(0..=2)?;
    for c in number.chars() {
        let down = lower == 2 || (lower == 1 && u.ratio(1, 2)?);
        text.push(if down { c.to_ascii_lowercase() } else { c });
    }
    pad(u, &mut text)?;
    Ok(text)
}

/// A mobile number in one of the accepted forms, and its normal form.
fn phone(u: &mut Unstructured) -> Result<(String, String)> {
    let mut national = u.choose(&MOBILE_OPERATORS)?.to_string();
    for _ in 0..7 {
        national.push(digit(u)?);
    }
    let (plus, prefix) = *u.choose(&[(true, "375"), (false, "375"), (false, "80")])?;
    let digits: Vec<char> = format!("{prefix}{national}").chars().collect();
    let mut groups: Vec<String> = Vec::new();
    let mut i = 0;
    while i < digits.len() {
        let len = u.int_in_range(1..=4)?.min(digits.len() - i);
        groups.push(digits[i..i + len].iter().collect());
        i += len;
    }
    if u.ratio(1, 3)? {
        let g = u.choose_index(groups.len())?;
        groups[g] = format!("({})", groups[g]);
    }
    let mut text = String::from(if plus { "+" } else { "" });
    for (i, g) in groups.iter().enumerate() {
        if i > 0 {
            text.push_str(u.choose(&["", "", " ", "-", " - "])?);
        }
        text.push_str(g);
    }
    if text.len() > 32 {
        text = format!("{}{prefix}{national}", if plus { "+" } else { "" });
    }
    if text.len() <= 30 && u.ratio(1, 4)? {
        text = format!(" {text} ");
    }
    Ok((text, format!("+375{national}")))
}

const CYRILLIC_EXTRA: [char; 6] = ['Ё', 'ё', 'І', 'і', 'Ў', 'ў'];
const SEPARATORS: [char; 5] = [' ', '-', '\'', '\u{2019}', '\u{02BC}'];

fn letter(u: &mut Unstructured, cyrillic: bool) -> Result<char> {
    Ok(if cyrillic {
        if u.ratio(1, 10)? {
            *u.choose(&CYRILLIC_EXTRA)?
        } else {
            char::from_u32(u.int_in_range(0x0410..=0x044F)?).expect("Cyrillic")
        }
    } else if u.ratio(1, 4)? {
        let c = char::from_u32(u.int_in_range(0xC0..=0x17F)?).expect("Latin");
        if c == '×' || c == '÷' { 'x' } else { c }
    } else {
        *u.choose(&[
            'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', 'P', 'Q',
            'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'a', 'e', 'i', 'o', 'u', 'n', 's', 't',
        ])?
    })
}

/// A valid name: 1–3 words of one script, single separators between them.
fn name(u: &mut Unstructured, cyrillic: bool) -> Result<String> {
    let mut text = String::new();
    for word in 0..u.int_in_range(1..=3)? {
        if word > 0 {
            text.push(*u.choose(&SEPARATORS)?);
        }
        for _ in 0..u.int_in_range(1..=12)? {
            text.push(letter(u, cyrillic)?);
        }
    }
    Ok(text)
}

fn submitted_at(u: &mut Unstructured) -> Result<String> {
    let date = date_between(
        u,
        NaiveDate::from_ymd_opt(1970, 1, 1).expect("date"),
        NaiveDate::from_ymd_opt(2100, 12, 31).expect("date"),
    )?;
    let mut text = format!(
        "{}T{:02}:{:02}:{:02}",
        date.format("%Y-%m-%d"),
        u.int_in_range(0..=23)?,
        u.int_in_range(0..=59)?,
        u.int_in_range(0..=59)?
    );
    if u.ratio(1, 3)? {
        text.push('.');
        for _ in 0..u.int_in_range(1..=9)? {
            text.push(digit(u)?);
        }
    }
    if u.ratio(1, 3)? {
        text.push('Z');
    } else {
        let sign = *u.choose(&['+', '-'])?;
        text.push_str(&format!(
            "{sign}{:02}:{:02}",
            u.int_in_range(0..=23)?,
            u.int_in_range(0..=59)?
        ));
    }
    Ok(text)
}

/// Up to `max` arbitrary characters.
fn text(u: &mut Unstructured, max: usize) -> Result<String> {
    (0..u.int_in_range(0..=max)?)
        .map(|_| u.arbitrary::<char>())
        .collect()
}

/// Unknown fields, which are ignored (`additionalProperties` everywhere).
fn extras(u: &mut Unstructured, object: &mut Map<String, Value>) -> Result<()> {
    for _ in 0..u.int_in_range(0..=2)? {
        let key = format!("x-{}", text(u, 16)?);
        let value = match u.int_in_range(0..=4)? {
            0 => Value::from(text(u, 40)?),
            1 => Value::from(u.arbitrary::<i64>()?),
            2 => Value::from(u.arbitrary::<bool>()?),
            3 => json!([text(u, 40)?]),
            _ => Value::Null,
        };
        object.insert(key, value);
    }
    Ok(())
}

fn short_alnum(u: &mut Unstructured, max: usize) -> Result<String> {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..u.int_in_range(1..=max)?)
        .map(|_| Ok(char::from(*u.choose(ALNUM)?)))
        .collect()
}

impl Application {
    fn generate(u: &mut Unstructured) -> Result<Self> {
        let (uuid_text, uuid) = uuid(u)?;
        let kind = *u.choose(&KINDS)?;
        const CODE: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-";
        let service: String = (0..u.int_in_range(1..=64)?)
            .map(|_| Ok(char::from(*u.choose(CODE)?)))
            .collect::<Result<_>>()?;
        let born = adult_birth(u)?;
        let number = number_for(u, born)?.expect("1800–2012");
        let cyrillic = u.arbitrary::<bool>()?;

        let mut issuing_service = Map::new();
        issuing_service.insert("code".into(), Value::from(service.clone()));
        if u.ratio(2, 3)? {
            let name = text(u, 200)?;
            issuing_service.insert("name".into(), Value::from(name));
        }
        extras(u, &mut issuing_service)?;

        let mut applicant = Map::new();
        applicant.insert("surname".into(), Value::from(name(u, cyrillic)?));
        applicant.insert("given_name".into(), Value::from(name(u, cyrillic)?));
        match u.int_in_range(0..=2)? {
            0 => {}
            1 => {
                applicant.insert("patronymic".into(), Value::Null);
            }
            _ => {
                applicant.insert("patronymic".into(), Value::from(name(u, cyrillic)?));
            }
        }
        applicant.insert(
            "date_of_birth".into(),
            Value::from(born.format("%Y-%m-%d").to_string()),
        );
        applicant.insert(
            "identification_number".into(),
            Value::from(present_number(u, &number)?),
        );
        extras(u, &mut applicant)?;

        let mut document = Map::new();
        document.insert("type".into(), Value::from(*u.choose(&DOCUMENT_TYPES)?));
        document.insert("number".into(), Value::from(short_alnum(u, 20)?));
        extras(u, &mut document)?;

        let mut object = Map::new();
        object.insert("application_id".into(), Value::from(uuid_text));
        object.insert("kind".into(), Value::from(kind));
        object.insert("submitted_at".into(), Value::from(submitted_at(u)?));
        object.insert("issuing_service".into(), Value::Object(issuing_service));
        object.insert("applicant".into(), Value::Object(applicant));
        object.insert("document".into(), Value::Object(document));
        object.insert("consent_to_verification".into(), Value::Bool(true));
        let mut normal_phone = None;
        let phone_choice = if kind_needs_phone(kind) {
            2
        } else {
            u.int_in_range(0..=2)?
        };
        match phone_choice {
            0 => {}
            1 => {
                object.insert("phone".into(), Value::Null);
            }
            _ => {
                let (text, normal) = phone(u)?;
                object.insert("phone".into(), Value::from(text));
                normal_phone = Some(normal);
            }
        }
        let attest = if kind_needs_phone(kind) {
            1
        } else {
            u.int_in_range(0..=2)?
        };
        if attest > 0 {
            object.insert("phone_use_attested".into(), Value::Bool(attest == 1));
        }
        extras(u, &mut object)?;
        Ok(Self {
            value: Value::Object(object),
            uuid,
            kind,
            service,
            number,
            phone: normal_phone,
        })
    }

    fn set(&mut self, path: &str, value: Value) {
        let (parent, key) = match path.split_once('.') {
            Some((parent, key)) => (self.value.get_mut(parent), key),
            None => (Some(&mut self.value), path),
        };
        if let Some(map) = parent.and_then(Value::as_object_mut) {
            map.insert(key.to_owned(), value);
        }
    }

    fn remove(&mut self, path: &str) {
        let (parent, key) = match path.split_once('.') {
            Some((parent, key)) => (self.value.get_mut(parent), key),
            None => (Some(&mut self.value), path),
        };
        if let Some(map) = parent.and_then(Value::as_object_mut) {
            map.remove(key);
        }
    }

    fn needs_phone(&self) -> bool {
        kind_needs_phone(self.kind)
    }

    /// Breaks one rule; returns the fields whose errors that may cause (the first is the one
    /// broken).
    fn break_one(&mut self, u: &mut Unstructured) -> Result<Vec<&'static str>> {
        let number = self.number.clone();
        Ok(match u.int_in_range(0..=25)? {
            0 => {
                let last = number.as_bytes()[13] - b'0';
                let wrong = (last + u.int_in_range(1..=9)?) % 10;
                self.set(ID, Value::from(format!("{}{wrong}", &number[..13])));
                vec![ID]
            }
            1 => {
                let lookalikes = [
                    'А', 'В', 'Е', 'К', 'М', 'Н', 'О', 'Р', 'С', 'Т', 'Х', 'І', 'а', 'е', 'о', 'р',
                    'с', 'х',
                ];
                let at = *u.choose(&[7usize, 11, 12])?;
                let mut chars: Vec<char> = number.chars().collect();
                chars[at] = *u.choose(&lookalikes)?;
                self.set(ID, Value::from(chars.into_iter().collect::<String>()));
                vec![ID]
            }
            2 => {
                let text = if u.arbitrary()? {
                    number[..13].to_owned()
                } else {
                    format!("{number}{}", digit(u)?)
                };
                self.set(ID, Value::from(text));
                vec![ID]
            }
            3 => {
                let first = *u.choose(&['0', '7', '8', '9'])?;
                let mut n = format!("{first}{}", &number[1..13]);
                n.push(char::from(b'0' + reference::check_digit(n.as_bytes())));
                self.set(ID, Value::from(n));
                vec![ID]
            }
            4 => {
                let (day, month) = *u.choose(&[
                    ("32", None),
                    ("00", None),
                    ("30", Some("02")),
                    ("15", Some("13")),
                    ("15", Some("00")),
                ])?;
                let month = month.unwrap_or(&number[3..5]);
                let mut n = format!("{}{day}{month}{}", &number[..1], &number[5..13]);
                n.push(char::from(b'0' + reference::check_digit(n.as_bytes())));
                self.set(ID, Value::from(n));
                vec![ID]
            }
            5 => {
                let born = adult_birth(u)?;
                let encoded = reference::identification_number(&number).expect("valid").1;
                let born = if born == encoded {
                    born - chrono::Duration::days(1)
                } else {
                    born
                };
                self.set(DOB, Value::from(born.format("%Y-%m-%d").to_string()));
                vec![ID, DOB]
            }
            6 | 7 => {
                let (from, to) = if u.arbitrary()? {
                    (
                        reference::latest_adult_birth() + chrono::Duration::days(1),
                        reference::today() - chrono::Duration::days(1),
                    )
                } else {
                    (
                        reference::today(),
                        NaiveDate::from_ymd_opt(2099, 12, 31).expect("date"),
                    )
                };
                let born = date_between(u, from, to)?;
                let n = number_for(u, born)?.expect("2000s");
                self.set(DOB, Value::from(born.format("%Y-%m-%d").to_string()));
                self.set(ID, Value::from(n));
                vec![DOB]
            }
            8 => {
                let text = *u.choose(&[
                    "1985-02-30",
                    "1990-13-01",
                    "1990-00-10",
                    "1999-04-31",
                    "1900-02-29",
                    "0000-00-00",
                ])?;
                self.set(DOB, Value::from(text));
                vec![DOB]
            }
            9 => {
                let text = *u.choose(&[
                    "14.03.1985",
                    "1985-3-14",
                    "85-03-14",
                    "1985-03-14T00:00:00",
                    " 1985-03-14",
                    "",
                ])?;
                self.set(DOB, Value::from(text));
                vec![DOB]
            }
            10..=13 => {
                let text = match u.int_in_range(0..=5)? {
                    0 => "+375171234567".to_owned(),
                    1 => "+37529123456".to_owned(),
                    2 => "8029123456789".to_owned(),
                    3 => "+375 29 123-45-6x".to_owned(),
                    4 => "+7 916 123-45-67".to_owned(),
                    _ => "+375 (29 1234567".to_owned(),
                };
                if self.needs_phone() && u.ratio(1, 3)? {
                    if u.arbitrary()? {
                        self.remove("phone");
                    } else {
                        self.set("phone", Value::Null);
                    }
                } else {
                    self.set("phone", Value::from(text));
                }
                vec!["phone"]
            }
            14 | 15 => {
                let field = *u.choose(&[
                    "applicant.surname",
                    "applicant.given_name",
                    "applicant.patronymic",
                ])?;
                let text = match u.int_in_range(0..=6)? {
                    0 => "Ivanоv".to_owned(), // Cyrillic о
                    1 => "Іваноў2".to_owned(),
                    2 => "Анна  Мария".to_owned(),
                    3 => "-Ян".to_owned(),
                    4 => String::new(),
                    5 => "Я".repeat(101),
                    _ => "O'Brien!".to_owned(),
                };
                self.set(field, Value::from(text));
                vec![field]
            }
            16 => {
                match u.int_in_range(0..=2)? {
                    0 => self.set("consent_to_verification", Value::Bool(false)),
                    1 => self.set("consent_to_verification", Value::from("true")),
                    _ => self.remove("consent_to_verification"),
                }
                vec!["consent_to_verification"]
            }
            17 => {
                if self.needs_phone() && u.arbitrary()? {
                    if u.arbitrary()? {
                        self.set("phone_use_attested", Value::Bool(false));
                    } else {
                        self.remove("phone_use_attested");
                    }
                } else {
                    self.set("phone_use_attested", Value::from("yes"));
                }
                vec!["phone_use_attested"]
            }
            18 => {
                let text = *u.choose(&["Issue", "renew", "issue ", ""])?;
                self.set("kind", Value::from(text));
                vec!["kind"]
            }
            19 => {
                let text = match u.int_in_range(0..=3)? {
                    0 => "Minsk-Sov".to_owned(),
                    1 => "a".repeat(65),
                    2 => String::new(),
                    _ => "minsk_sov".to_owned(),
                };
                self.set("issuing_service.code", Value::from(text));
                vec!["issuing_service.code"]
            }
            20 => {
                self.set(
                    "issuing_service.name",
                    if u.arbitrary()? {
                        Value::from("я".repeat(201))
                    } else {
                        Value::from(5)
                    },
                );
                vec!["issuing_service.name"]
            }
            21 => {
                let text = *u.choose(&[
                    "2026-11-22 10:15:00+03:00",
                    "2026-11-22T10:15:00",
                    "2026-02-30T10:15:00Z",
                    "2026-11-22T25:00:00Z",
                    "2026-11-22T10:15:00+03:60",
                    "2026-11-22t10:15:00z",
                ])?;
                self.set("submitted_at", Value::from(text));
                vec!["submitted_at"]
            }
            22 => {
                let text = *u.choose(&["driving_licence", "Passport", ""])?;
                self.set("document.type", Value::from(text));
                vec!["document.type"]
            }
            23 => {
                let text = *u.choose(&[
                    "MP-1234567",
                    "MP 1234567",
                    "",
                    "123456789012345678901",
                    "МР1234567",
                ])?;
                self.set("document.number", Value::from(text));
                vec!["document.number"]
            }
            24 => {
                let mut fields = vec![
                    "application_id",
                    "kind",
                    "submitted_at",
                    "issuing_service",
                    "issuing_service.code",
                    "applicant",
                    "applicant.surname",
                    "applicant.given_name",
                    DOB,
                    ID,
                    "document",
                    "document.type",
                    "document.number",
                    "consent_to_verification",
                ];
                if self.needs_phone() {
                    fields.extend(["phone", "phone_use_attested"]);
                }
                let field = *u.choose(&fields)?;
                self.remove(field);
                vec![field]
            }
            _ => {
                let field = *u.choose(&reference::KNOWN_FIELDS[1..])?;
                let container = matches!(field, "issuing_service" | "applicant" | "document");
                let value = match u.int_in_range(0..=3)? {
                    _ if container => Value::from("x"),
                    0 => Value::from(1),
                    1 => Value::Bool(true),
                    2 => json!([]),
                    _ => json!({}),
                };
                // `true` is a boolean where a boolean is asked for: use a string there.
                let value = match (field, &value) {
                    ("consent_to_verification" | "phone_use_attested", Value::Bool(_)) => {
                        Value::from("true")
                    }
                    _ => value,
                };
                self.set(field, value);
                vec![field]
            }
        })
    }
}
