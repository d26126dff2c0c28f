//! A deterministic corpus of malformed and hostile intake messages, each with the one outcome
//! the intake must reach: a parked dead letter (`malformed`, `invalid`), a `rejected`
//! application naming the fields at fault, or (for hostile text where a field accepts any text)
//! a plain `received` application.
//!
//! No randomness: every body, and every `application_id` in it, is the same on every run.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::common::example_json;

/// The intake's body limit (CONTRACT §2.1: "A body over 64 KiB is not parsed").
pub const LIMIT: usize = 64 * 1024;

/// The first application id of the corpus; case ids count up from it.
const SEED: u128 = 0x5eed_0000_0000_4000_8000_0000_0000_0000;

/// What the intake must make of a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Parked as a `malformed` dead letter (too big, not UTF-8, not JSON, not an object).
    Malformed,
    /// Parked as an `invalid` dead letter (an object without a valid `application_id`).
    Invalid,
    /// A `rejected` application (`invalid_application`) listing at least these fields.
    Rejected { fields: Vec<&'static str> },
    /// A `received` application: the hostile part is where any text is allowed, or ignored.
    Received,
}

impl Expect {
    /// The label of the expectation, for summaries.
    pub fn label(&self) -> &'static str {
        match self {
            Expect::Malformed => "malformed",
            Expect::Invalid => "invalid",
            Expect::Rejected { .. } => "rejected",
            Expect::Received => "received",
        }
    }
}

/// One hostile message.
#[derive(Debug, Clone)]
pub struct Case {
    /// What it tries, for failure messages.
    pub name: String,
    /// The body, byte for byte.
    pub body: Vec<u8>,
    /// The outcome the intake must reach.
    pub expect: Expect,
    /// The valid `application_id` in the body, where there is one.
    pub application_id: Option<Uuid>,
    /// The AMQP `message_id` to publish with (odd ones included: the body decides).
    pub message_id: Option<String>,
    /// A product bug this case is known to hit (the test publishes such cases last, so that
    /// the rest of the corpus is checked first and a failure names them alone).
    pub fixme: Option<&'static str>,
}

/// Builds the corpus with distinct ids.
struct Builder {
    cases: Vec<Case>,
    next: u128,
}

fn rejected(fields: &[&'static str]) -> Expect {
    Expect::Rejected {
        fields: fields.to_vec(),
    }
}

/// `applicant.surname` → `/applicant/surname`.
fn pointer(field: &str) -> String {
    format!("/{}", field.replace('.', "/"))
}

impl Builder {
    fn id(&mut self) -> Uuid {
        self.next += 1;
        Uuid::from_u128(SEED + self.next)
    }

    /// The valid example application under a fresh id.
    fn valid(&mut self) -> (Uuid, Value) {
        let id = self.id();
        let mut application = example_json("valid-issue-belarusian.json");
        application["application_id"] = Value::from(id.to_string());
        (id, application)
    }

    fn push(&mut self, name: impl Into<String>, body: Vec<u8>, expect: Expect, id: Option<Uuid>) {
        let message_id = id.map(|id| id.to_string());
        self.cases.push(Case {
            name: name.into(),
            body,
            expect,
            application_id: id,
            message_id,
            fixme: None,
        });
    }

    /// A raw body that carries no valid application id.
    fn raw(&mut self, name: impl Into<String>, body: impl Into<Vec<u8>>, expect: Expect) {
        self.push(name, body.into(), expect, None);
    }

    /// The valid application with `field` set to `value`.
    fn with(&mut self, name: impl Into<String>, field: &str, value: Value, expect: Expect) {
        let (id, mut application) = self.valid();
        *application
            .pointer_mut(&pointer(field))
            .unwrap_or_else(|| panic!("the example has {field}")) = value;
        let id = matches!(expect, Expect::Rejected { .. } | Expect::Received).then_some(id);
        let body = serde_json::to_vec(&application).unwrap();
        self.push(name, body, expect, id);
    }

    /// The valid application, serialised, with `field`'s value replaced by raw `bytes` (which
    /// go inside the JSON string's quotes).
    fn spliced(&mut self, name: impl Into<String>, field: &str, bytes: &[u8], expect: Expect) {
        const MARK: &str = "@@SPLICE@@";
        let (id, mut application) = self.valid();
        *application.pointer_mut(&pointer(field)).unwrap() = Value::from(MARK);
        let text = serde_json::to_vec(&application).unwrap();
        let at = text
            .windows(MARK.len())
            .position(|w| w == MARK.as_bytes())
            .unwrap();
        let mut body = text[..at].to_vec();
        body.extend_from_slice(bytes);
        body.extend_from_slice(&text[at + MARK.len()..]);
        let id = matches!(expect, Expect::Rejected { .. } | Expect::Received).then_some(id);
        self.push(name, body, expect, id);
    }

    /// The valid application serialised and then changed by `edit` on the text.
    fn edited(
        &mut self,
        name: impl Into<String>,
        expect: Expect,
        edit: impl FnOnce(Vec<u8>) -> Vec<u8>,
    ) {
        let (id, application) = self.valid();
        let body = edit(serde_json::to_vec_pretty(&application).unwrap());
        let id = matches!(expect, Expect::Rejected { .. } | Expect::Received).then_some(id);
        self.push(name, body, expect, id);
    }
}

/// Every field of the application, with its JSON type.
const FIELDS: [(&str, &str); 18] = [
    ("application_id", "string"),
    ("kind", "string"),
    ("submitted_at", "string"),
    ("issuing_service", "object"),
    ("issuing_service.code", "string"),
    ("issuing_service.name", "string"),
    ("applicant", "object"),
    ("applicant.surname", "string"),
    ("applicant.given_name", "string"),
    ("applicant.patronymic", "string"),
    ("applicant.date_of_birth", "string"),
    ("applicant.identification_number", "string"),
    ("document", "object"),
    ("document.type", "string"),
    ("document.number", "string"),
    ("phone", "string"),
    ("consent_to_verification", "boolean"),
    ("phone_use_attested", "boolean"),
];

/// The whole corpus, in a fixed order.
pub fn corpus() -> Vec<Case> {
    let mut b = Builder {
        cases: Vec::new(),
        next: 0,
    };
    truncations(&mut b);
    huge(&mut b);
    nesting(&mut b);
    wrong_types(&mut b);
    invalid_utf8(&mut b);
    not_json(&mut b);
    no_valid_id(&mut b);
    lookalikes(&mut b);
    sql_injection(&mut b);
    header_injection(&mut b);
    odd_message_ids(&mut b);
    nul_characters(&mut b);
    b.cases
}

/// Truncations of the valid example every 7 bytes, and cuts inside Cyrillic characters.
fn truncations(b: &mut Builder) {
    let (_, application) = b.valid();
    let full = serde_json::to_vec_pretty(&application).unwrap();
    for at in (0..full.len()).step_by(7) {
        b.raw(
            format!("truncated at byte {at} of {}", full.len()),
            &full[..at],
            Expect::Malformed,
        );
    }
    // Cut after the first byte of a two-byte Cyrillic character: invalid UTF-8.
    let mid_char: Vec<usize> = (1..full.len())
        .filter(|&i| full[i] & 0b1100_0000 == 0b1000_0000 && i % 7 != 0)
        .step_by(5)
        .take(10)
        .collect();
    assert!(mid_char.len() >= 8, "the example has Cyrillic text");
    for at in mid_char {
        b.raw(
            format!("truncated inside a multi-byte character at byte {at}"),
            &full[..at],
            Expect::Malformed,
        );
    }
}

/// Bodies around and over the 64 KiB limit.
fn huge(b: &mut Builder) {
    let pad_to = |mut body: Vec<u8>, len: usize| {
        let close = body.pop().unwrap();
        assert_eq!(close, b'}');
        body.resize(len - 1, b' ');
        body.push(b'}');
        body
    };
    // A valid application padded with whitespace to just over the limit: never parsed.
    b.edited(
        "valid application padded to 64 KiB + 1",
        Expect::Malformed,
        |body| pad_to(body, LIMIT + 1),
    );
    b.raw(
        "64 KiB + 1 of spaces",
        vec![b' '; LIMIT + 1],
        Expect::Malformed,
    );
    b.raw(
        "64 KiB + 1 of '{'",
        vec![b'{'; LIMIT + 1],
        Expect::Malformed,
    );
    b.raw("1 MiB of 'A'", vec![b'A'; 1 << 20], Expect::Malformed);
    for field in [
        "issuing_service.name",
        "applicant.surname",
        "document.number",
    ] {
        b.with(
            format!("{field} of 70 000 characters"),
            field,
            Value::from("Я".repeat(35_000) + &"x".repeat(35_000)),
            Expect::Malformed,
        );
    }
    let (_, mut application) = b.valid();
    application["office_note"] = Value::from("n".repeat(70_000));
    let body = serde_json::to_vec(&application).unwrap();
    b.raw("extra field of 70 000 characters", body, Expect::Malformed);

    // Exactly at the limit: parsed, and judged by content.
    b.edited(
        "valid application padded to exactly 64 KiB",
        Expect::Received,
        |body| pad_to(body, LIMIT),
    );
    let at_limit = |b: &mut Builder, name: &str, field: &str, expect: Expect| {
        let (id, mut application) = b.valid();
        *application.pointer_mut(&pointer(field)).unwrap() = Value::from("");
        let len = serde_json::to_vec(&application).unwrap().len();
        *application.pointer_mut(&pointer(field)).unwrap() = Value::from("x".repeat(LIMIT - len));
        let body = serde_json::to_vec(&application).unwrap();
        assert_eq!(body.len(), LIMIT, "{name}");
        let id = (expect != Expect::Invalid).then_some(id);
        b.push(name, body, expect, id);
    };
    at_limit(
        b,
        "surname making the body exactly 64 KiB",
        "applicant.surname",
        rejected(&["applicant.surname"]),
    );
    at_limit(
        b,
        "identification number making the body exactly 64 KiB",
        "applicant.identification_number",
        rejected(&["applicant.identification_number"]),
    );
    at_limit(
        b,
        "phone making the body exactly 64 KiB",
        "phone",
        rejected(&["phone"]),
    );
    at_limit(
        b,
        "service code making the body exactly 64 KiB",
        "issuing_service.code",
        rejected(&["issuing_service.code"]),
    );
    at_limit(
        b,
        "application id making the body exactly 64 KiB",
        "application_id",
        Expect::Invalid,
    );
    // Within the limit but far over each field's length.
    for field in [
        "applicant.given_name",
        "applicant.patronymic",
        "issuing_service.name",
        "submitted_at",
    ] {
        b.with(
            format!("{field} of 30 000 characters"),
            field,
            Value::from("Ы".repeat(15_000)),
            rejected(&[field]),
        );
    }
}

/// Deep nesting: serde_json's recursion limit (128) makes anything deeper malformed.
fn nesting(b: &mut Builder) {
    for depth in [129, 200, 10_000] {
        b.raw(
            format!("array nested {depth} deep"),
            "[".repeat(depth) + &"]".repeat(depth),
            Expect::Malformed,
        );
        b.raw(
            format!("object nested {depth} deep"),
            "{\"a\":".repeat(depth) + "1" + &"}".repeat(depth),
            Expect::Malformed,
        );
    }
    b.raw(
        "array nested 100 deep (JSON, but not an object)",
        "[".repeat(100) + &"]".repeat(100),
        Expect::Malformed,
    );
    b.raw(
        "object nested 100 deep, no application id",
        "{\"a\":".repeat(100) + "1" + &"}".repeat(100),
        Expect::Invalid,
    );
    b.raw(
        "10 000 unclosed brackets",
        "[".repeat(10_000),
        Expect::Malformed,
    );
    // Unknown extra fields are ignored, however deep, as long as they parse.
    let deep = |depth: usize| -> Value {
        let mut value = json!("bottom");
        for _ in 0..depth {
            value = json!({ "a": [value] });
        }
        value
    };
    let (id, mut application) = b.valid();
    application["office_note"] = deep(50);
    b.push(
        "extra field nested 100 deep",
        serde_json::to_vec(&application).unwrap(),
        Expect::Received,
        Some(id),
    );
    // A deep extra field past the limit makes the whole body unreadable.
    let (_, mut application) = b.valid();
    application["applicant"]["office_note"] = deep(70);
    // serde_json's serialiser has no depth limit; only its parser has.
    let body = serde_json::to_vec(&application).unwrap();
    b.raw("extra field nested 140 deep", body, Expect::Malformed);
    // A required object replaced by a deep one: its own fields are missing.
    b.with(
        "applicant replaced by an object nested 60 deep",
        "applicant",
        deep(30),
        rejected(&["applicant.surname", "applicant.identification_number"]),
    );
    b.with(
        "kind replaced by an array nested 60 deep",
        "kind",
        deep(30)["a"].clone(),
        rejected(&["kind"]),
    );
}

/// A value of every wrong JSON type for every field.
fn wrong_types(b: &mut Builder) {
    let values: [(&str, &str, Value); 7] = [
        ("a number", "number", json!(42)),
        ("a negative float", "number", json!(-1.5e300)),
        ("an array", "array", json!(["x"])),
        ("an object", "object", json!({"$ne": null})),
        ("true", "boolean", json!(true)),
        ("null", "null", Value::Null),
        ("a string", "string", json!("true")),
    ];
    for (field, ty) in FIELDS {
        for (label, value_type, value) in &values {
            if *value_type == ty {
                continue;
            }
            // null is allowed for the patronymic; a negative float is one number too many.
            if (field == "applicant.patronymic" && value.is_null()) || *label == "a negative float"
            {
                continue;
            }
            let expect = match field {
                "application_id" => Expect::Invalid,
                _ => rejected(&[field]),
            };
            b.with(format!("{field} is {label}"), field, value.clone(), expect);
        }
    }
    for field in ["application_id", "kind", "consent_to_verification"] {
        let (_, mut application) = b.valid();
        application.as_object_mut().unwrap().remove(field);
        let expect = match field {
            "application_id" => Expect::Invalid,
            "kind" => rejected(&["kind"]),
            _ => rejected(&["consent_to_verification"]),
        };
        let id = (expect != Expect::Invalid)
            .then(|| Uuid::parse_str(application["application_id"].as_str().unwrap()).unwrap());
        b.push(
            format!("{field} is missing"),
            serde_json::to_vec(&application).unwrap(),
            expect,
            id,
        );
    }
    b.with(
        "a negative float for the phone",
        "phone",
        json!(-1.5e300),
        rejected(&["phone"]),
    );
    b.with(
        "a huge integer for the document number",
        "document.number",
        serde_json::from_str("123456789012345678901234567890").unwrap(),
        rejected(&["document.number"]),
    );
}

/// Invalid UTF-8 inside string values and between tokens.
fn invalid_utf8(b: &mut Builder) {
    let sequences: [(&str, &[u8]); 12] = [
        ("a stray 0xFF", b"\xff"),
        ("a stray 0xFE 0xFF", b"\xfe\xff"),
        ("an overlong '/' (0xC0 0xAF)", b"\xc0\xaf"),
        ("an overlong NUL (0xC0 0x80)", b"\xc0\x80"),
        ("a three-byte overlong '/'", b"\xe0\x80\xaf"),
        ("an encoded lone high surrogate", b"\xed\xa0\x80"),
        ("an encoded lone low surrogate", b"\xed\xbf\xbf"),
        ("a code point above U+10FFFF", b"\xf4\x90\x80\x80"),
        ("a five-byte sequence", b"\xf8\x88\x80\x80\x80"),
        ("a truncated Cyrillic letter", b"\xd0"),
        ("a truncated euro sign", b"\xe2\x82"),
        ("a lone continuation byte", b"\x80"),
    ];
    let fields = [
        "applicant.surname",
        "issuing_service.code",
        "issuing_service.name",
        "application_id",
    ];
    for (i, (label, bytes)) in sequences.iter().enumerate() {
        let field = fields[i % fields.len()];
        let mut value = b"Ka".to_vec();
        value.extend_from_slice(bytes);
        value.extend_from_slice(b"la");
        b.spliced(
            format!("{label} in {field}"),
            field,
            &value,
            Expect::Malformed,
        );
    }
    for (label, bytes) in &sequences[..4] {
        b.edited(
            format!("{label} between tokens"),
            Expect::Malformed,
            |mut body| {
                let at = body.iter().position(|&c| c == b',').unwrap() + 1;
                body.splice(at..at, bytes.iter().copied());
                body
            },
        );
    }
    let (_, application) = b.valid();
    let text = serde_json::to_string(&application).unwrap();
    let mut utf16 = vec![0xff, 0xfe];
    utf16.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    b.raw(
        "the application in UTF-16 with a BOM",
        utf16,
        Expect::Malformed,
    );
    b.raw(
        "Windows-1251 bytes",
        b"{\"applicant\": {\"surname\": \"\xca\xe0\xe2\xe0\xeb\xe5\xed\xea\xe0\"}}".to_vec(),
        Expect::Malformed,
    );
}

/// Not JSON, not an object, or JSON with the tricks lenient parsers accept.
fn not_json(b: &mut Builder) {
    let bodies: [(&str, &[u8]); 30] = [
        ("whitespace only", b" \n\t "),
        ("null", b"null"),
        ("true", b"true"),
        ("zero", b"0"),
        ("a number out of range", b"1e999"),
        ("a string", b"\"{\\\"application_id\\\": 1}\""),
        ("an empty array", b"[]"),
        ("an array of an object", b"[{}]"),
        ("a lone brace", b"{"),
        ("a closing brace", b"}"),
        ("an extra closing brace", b"{}}"),
        ("two objects", b"{\"a\": 1}{\"b\": 2}"),
        ("single quotes", b"{'application_id': 'x'}"),
        ("bare keys", b"{application_id: 1}"),
        ("a trailing comma", b"{\"a\": 1,}"),
        ("NaN", b"{\"a\": NaN}"),
        ("Infinity", b"{\"a\": -Infinity}"),
        ("a block comment", b"/* hi */ {}"),
        ("a line comment", b"{\"a\": 1} // hi"),
        ("XML", b"<application><id>1</id></application>"),
        ("YAML", b"application_id: 7a9e664c\nkind: issue\n"),
        ("gzip magic", b"\x1f\x8b\x08\x00\x00\x00\x00\x00"),
        ("a raw NUL byte", b"\x00"),
        ("a NUL byte between tokens", b"{\"a\":\x001}"),
        ("an invalid escape", b"{\"a\": \"\\x41\"}"),
        ("a short unicode escape", b"{\"a\": \"\\u12\"}"),
        ("a lone high surrogate escape", b"{\"a\": \"\\ud800\"}"),
        ("a lone low surrogate escape", b"{\"a\": \"\\udc00x\"}"),
        ("a raw tab in a string", b"{\"a\": \"x\ty\"}"),
        (
            "HTTP request smuggled",
            b"POST / HTTP/1.1\r\nHost: x\r\n\r\n{}",
        ),
    ];
    for (label, body) in bodies {
        b.raw(label, body.to_vec(), Expect::Malformed);
    }
    b.edited("a byte-order mark first", Expect::Malformed, |body| {
        [b"\xef\xbb\xbf".as_slice(), &body].concat()
    });
    b.edited("garbage after the object", Expect::Malformed, |mut body| {
        body.extend_from_slice(b" x");
        body
    });
    b.edited("a second object after it", Expect::Malformed, |mut body| {
        body.extend_from_slice(b"{}");
        body
    });
    b.spliced(
        "a lone surrogate escape in the surname",
        "applicant.surname",
        b"Ka\\ud800la",
        Expect::Malformed,
    );
    b.spliced(
        "a raw line feed in the surname",
        "applicant.surname",
        b"Ka\nla",
        Expect::Malformed,
    );
    b.spliced(
        "raw CR LF in the service code",
        "issuing_service.code",
        b"minsk\r\nX-Injected: 1",
        Expect::Malformed,
    );
    b.spliced(
        "a raw NUL in the surname",
        "applicant.surname",
        b"Ka\x00la",
        Expect::Malformed,
    );
    b.raw(
        "the application base64-encoded",
        b"eyJhcHBsaWNhdGlvbl9pZCI6ICI3YTllNjY0YyJ9".to_vec(),
        Expect::Malformed,
    );
}

/// Objects without a valid `application_id`: parked as invalid.
fn no_valid_id(b: &mut Builder) {
    b.raw("an empty object", b"{}".to_vec(), Expect::Invalid);
    b.raw(
        "an object of something else",
        br#"{"hello": "world"}"#.to_vec(),
        Expect::Invalid,
    );
    b.raw(
        "a prototype-pollution object",
        br#"{"__proto__": {"admin": true}, "constructor": {"prototype": {}}}"#.to_vec(),
        Expect::Invalid,
    );
    let ids: [(&str, String); 12] = [
        ("empty", String::new()),
        ("not a UUID", "nope".into()),
        ("in braces", "{7a9e664c-92b2-4787-bfbb-520108e9d1fc}".into()),
        (
            "a URN",
            "urn:uuid:7a9e664c-92b2-4787-bfbb-520108e9d1fc".into(),
        ),
        ("without hyphens", "7a9e664c92b24787bfbb520108e9d1fc".into()),
        (
            "with a trailing space",
            "7a9e664c-92b2-4787-bfbb-520108e9d1fc ".into(),
        ),
        (
            "with a trailing line feed",
            "7a9e664c-92b2-4787-bfbb-520108e9d1fc\n".into(),
        ),
        (
            "with a Cyrillic 'а' look-alike",
            "7а9e664c-92b2-4787-bfbb-520108e9d1fc".into(),
        ),
        (
            "with fullwidth digits",
            "７a9e664c-92b2-4787-bfbb-520108e9d1fc".into(),
        ),
        (
            "one digit too long",
            "7a9e664c-92b2-4787-bfbb-520108e9d1fc0".into(),
        ),
        ("with a NUL", "7a9e664c-92b2-4787-bfbb-520108e9d1f\0".into()),
        (
            "with a zero-width space",
            "7a9e664c-92b2-4787-bfbb-\u{200b}520108e9d1fc".into(),
        ),
    ];
    for (label, id) in ids {
        b.with(
            format!("application_id {label}"),
            "application_id",
            Value::from(id),
            Expect::Invalid,
        );
    }
    // Duplicate keys: the parser keeps the last one.
    b.edited(
        "a second application_id key that is not a UUID",
        Expect::Invalid,
        |mut body| {
            body.pop();
            body.extend_from_slice(b", \"application_id\": \"nope\"}");
            body
        },
    );
}

/// Unicode look-alikes, invisible and bidirectional characters.
fn lookalikes(b: &mut Builder) {
    const NUMBER: &str = "3090792H017PB5";
    let cyrillic = ['А', 'В', 'Е', 'К', 'М', 'Н', 'О', 'Р', 'С', 'Т', 'Х', 'І'];
    for position in [8, 12, 13] {
        for letter in cyrillic {
            let number: String = NUMBER
                .chars()
                .enumerate()
                .map(|(i, c)| if i + 1 == position { letter } else { c })
                .collect();
            b.with(
                format!("Cyrillic '{letter}' at position {position} of the identification number"),
                "applicant.identification_number",
                Value::from(number),
                rejected(&["applicant.identification_number"]),
            );
        }
    }
    for (label, number) in [
        ("lower-case Cyrillic 'н'", "3090792н017PB5"),
        ("Latin 'O' for zero", "3O90792H017PB5"),
        ("Latin 'l' for one", "3090792H0l7PB5"),
        ("fullwidth digits", "３０９０７９２H017PB5"),
        ("Greek 'Η'", "3090792Η017PB5"),
        ("a zero-width space", "3090792H017\u{200b}PB5"),
    ] {
        b.with(
            format!("identification number with {label}"),
            "applicant.identification_number",
            Value::from(number),
            rejected(&["applicant.identification_number"]),
        );
    }
    let names = [
        ("applicant.surname", "Kаваленка"),
        ("applicant.surname", "Каваленкa"),
        ("applicant.surname", "Kovalenkо"),
        ("applicant.given_name", "Уладзіслаw"),
        ("applicant.given_name", "Vladislаv"),
        ("applicant.patronymic", "Міхайлаvіч"),
        ("applicant.surname", "Κovalenko"), // Greek capital kappa
        ("applicant.given_name", "Ⅰvan"),   // Roman numeral one
    ];
    for (field, name) in names {
        b.with(
            format!("{field} mixes scripts: {name}"),
            field,
            Value::from(name),
            rejected(&[field]),
        );
    }
    let invisible = [
        ("a zero-width space", '\u{200b}'),
        ("a zero-width non-joiner", '\u{200c}'),
        ("a zero-width joiner", '\u{200d}'),
        ("a word joiner", '\u{2060}'),
        ("a zero-width no-break space", '\u{feff}'),
        ("a right-to-left override", '\u{202e}'),
        ("a left-to-right override", '\u{202d}'),
        ("a right-to-left mark", '\u{200f}'),
        ("a right-to-left isolate", '\u{2067}'),
        ("a combining acute accent", '\u{0301}'),
        ("a soft hyphen", '\u{00ad}'),
        ("a Hangul filler", '\u{3164}'),
    ];
    let name_fields = [
        "applicant.surname",
        "applicant.given_name",
        "applicant.patronymic",
    ];
    for (i, (label, c)) in invisible.iter().enumerate() {
        for field in [name_fields[i % 3], name_fields[(i + 1) % 3]] {
            b.with(
                format!("{label} inside {field}"),
                field,
                Value::from(format!("Кава{c}ленка")),
                rejected(&[field]),
            );
        }
    }
    for (label, phone) in [
        ("fullwidth digits", "+３７５２９７３５１８４６"),
        ("one fullwidth digit", "+37529735184６"),
        ("a fullwidth plus", "＋375297351846"),
        ("Arabic-Indic digits", "+٣٧٥297351846"),
        ("Devanagari digits", "+३७५297351846"),
        ("an en dash", "+375 29 735–18–46"),
        ("a non-breaking space", "+375\u{a0}297351846"),
        ("a right-to-left override", "+375\u{202e}297351846"),
    ] {
        b.with(
            format!("phone with {label}"),
            "phone",
            Value::from(phone),
            rejected(&["phone"]),
        );
    }
    b.with(
        "service code with a Cyrillic 'о'",
        "issuing_service.code",
        Value::from("minsk-sоv-oa"),
        rejected(&["issuing_service.code"]),
    );
    b.with(
        "document number with a Cyrillic 'М'",
        "document.number",
        Value::from("МP3417825"),
        rejected(&["document.number"]),
    );
    b.with(
        "kind with a Cyrillic 'і'",
        "kind",
        Value::from("іssue"),
        rejected(&["kind"]),
    );
}

const SQL: [&str; 5] = [
    "'; DROP TABLE applications; --",
    "\" OR 1=1 --",
    "$$; SELECT pg_sleep(10); $$",
    "1; DELETE FROM dead_letters",
    "' UNION SELECT password_hash FROM uid_registry --",
];

/// SQL injection attempts in every string field.
fn sql_injection(b: &mut Builder) {
    let refusing = [
        "kind",
        "submitted_at",
        "issuing_service.code",
        "applicant.surname",
        "applicant.given_name",
        "applicant.patronymic",
        "applicant.date_of_birth",
        "applicant.identification_number",
        "document.type",
        "document.number",
        "phone",
    ];
    for payload in SQL {
        for field in refusing {
            b.with(
                format!("SQL {payload:?} in {field}"),
                field,
                Value::from(payload),
                rejected(&[field]),
            );
        }
        b.with(
            format!("SQL {payload:?} in application_id"),
            "application_id",
            Value::from(payload),
            Expect::Invalid,
        );
    }
    // Any text is allowed in the service's display name: the application is simply received.
    for payload in &SQL[..3] {
        b.with(
            format!("SQL {payload:?} in issuing_service.name"),
            "issuing_service.name",
            Value::from(*payload),
            Expect::Received,
        );
    }
    let (id, mut application) = b.valid();
    application[SQL[0]] = Value::from(SQL[2]);
    b.push(
        "SQL as an unknown key and value",
        serde_json::to_vec(&application).unwrap(),
        Expect::Received,
        Some(id),
    );
}

/// CR LF (and friends) trying to inject headers wherever a value might end up in one.
fn header_injection(b: &mut Builder) {
    let payloads = [
        "minsk-sov-oa\r\nX-Injected: 1",
        "\r\nBcc: attacker@example.com",
        "minsk\nsov",
        "minsk\rsov",
        "minsk%0d%0aSet-Cookie: a=1",
        "minsk\u{2028}sov",
    ];
    for payload in payloads {
        for field in [
            "issuing_service.code",
            "applicant.surname",
            "applicant.given_name",
            "document.number",
        ] {
            b.with(
                format!("header injection {payload:?} in {field}"),
                field,
                Value::from(payload),
                rejected(&[field]),
            );
        }
    }
    b.with(
        "header injection in the phone",
        "phone",
        Value::from("+375297351846\r\nX-Injected: 1"),
        rejected(&["phone"]),
    );
    b.with(
        "header injection in submitted_at",
        "submitted_at",
        Value::from("2026-11-22T10:15:00+03:00\r\nX-Injected: 1"),
        rejected(&["submitted_at"]),
    );
    b.with(
        "header injection in kind",
        "kind",
        Value::from("issue\r\nx-uid-error-kind: none"),
        rejected(&["kind"]),
    );
    b.with(
        "CR LF in issuing_service.name (free text)",
        "issuing_service.name",
        Value::from("Служба\r\nX-Injected: 1"),
        Expect::Received,
    );
}

/// Odd AMQP `message_id`s on some cases: the body alone decides.
fn odd_message_ids(b: &mut Builder) {
    let odd = [
        "x".repeat(255),
        "id\r\nX-Injected: 1".to_owned(),
        "not-a-uuid".to_owned(),
        String::new(),
        "'; DROP TABLE dead_letters; --".to_owned(),
        Uuid::from_u128(SEED + 1).to_string(),
        "🙂".repeat(63),
        "\u{202e}evil".to_owned(),
    ];
    let count = b.cases.len();
    for (n, i) in (3..count).step_by(11).enumerate() {
        b.cases[i].message_id = Some(odd[n % odd.len()].clone());
        b.cases[i].name += &format!(" (message_id #{})", n % odd.len());
    }
}

/// U+0000, which JSON and AMQP allow but PostgreSQL `text` and `jsonb` refuse.
fn nul_characters(b: &mut Builder) {
    // Regression cases: PostgreSQL refuses NUL in `text` and `jsonb`. They once made the
    // intake's transaction fail and the consumer drop its connection (a poison message that
    // stalled the intake); now text from outside is stored with NUL as U+FFFD
    // (`db::pg_safe_text`), the raw bytes stay in `bytea`, and a statement the database still
    // refuses parks the message instead of dropping the connection.
    b.with(
        "an escaped NUL (\\u0000) in the surname",
        "applicant.surname",
        Value::from("Кава\0ленка"),
        rejected(&["applicant.surname"]),
    );
    b.with(
        "an escaped NUL (\\u0000) in issuing_service.name (free text)",
        "issuing_service.name",
        Value::from("Служба\0"),
        Expect::Received,
    );
    b.raw(
        "not JSON, message_id with a NUL",
        b"not json (nul id)".to_vec(),
        Expect::Malformed,
    );
    b.cases.last_mut().unwrap().message_id = Some("nul\0inside".to_owned());
}
