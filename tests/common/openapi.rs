//! Checks real HTTP responses against schemas/openapi.yaml.
//!
//! The document is OpenAPI 3.1, so its schemas are JSON Schema 2020-12. To validate a response
//! body, a schema document is built around the documented response schema together with the
//! document's `components`, so that every `$ref: '#/components/...'` resolves inside it, and
//! compiled with format validation on (`date-time`, `uuid`, ...). Validators are compiled
//! once per (method, templated path, status) and cached.
//!
//! Loading checks the document itself and panics on a broken one (unresolvable `$ref`, an
//! operation without responses, a secured operation that does not document 401 with a
//! `WWW-Authenticate` header, a path parameter that is not declared, a response schema that
//! does not compile): see [`OpenApi::problems`].

#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};

/// The HTTP methods an OpenAPI path item may hold.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// A parsed OpenAPI document with a cache of compiled response validators.
pub struct OpenApi {
    /// Where the document was read from (for messages).
    source: String,
    /// The whole document, as JSON.
    doc: Value,
    /// Compiled validators by (METHOD, templated path, status).
    validators: Mutex<HashMap<(String, String, u16), Arc<jsonschema::Validator>>>,
}

impl OpenApi {
    /// Loads `<CARGO_MANIFEST_DIR>/schemas/openapi.yaml` (the manifest directory of the
    /// package the test is compiled in: the workspace root).
    pub fn load() -> Self {
        Self::from_path(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schemas/openapi.yaml"
        )))
    }

    /// Loads the document at `path`. Panics if it cannot be read or parsed, or if it is
    /// broken (see [`OpenApi::problems`]).
    pub fn from_path(path: &Path) -> Self {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let api = Self::from_yaml_str(&text, &path.display().to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        let problems = api.problems();
        assert!(
            problems.is_empty(),
            "{} is broken:\n  {}",
            api.source,
            problems.join("\n  ")
        );
        api
    }

    /// Parses a document from YAML text without checking it (`source` names it in
    /// messages). Use [`OpenApi::problems`] to check it.
    pub fn from_yaml_str(text: &str, source: &str) -> Result<Self, String> {
        let doc: Value = serde_norway::from_str(text).map_err(|e| {
            format!("{source} is not valid YAML (or not representable as JSON): {e}")
        })?;
        if !doc.is_object() {
            return Err(format!("{source}: the document is not a mapping"));
        }
        Ok(Self {
            source: source.to_owned(),
            doc,
            validators: Mutex::new(HashMap::new()),
        })
    }

    /// The parsed document.
    pub fn document(&self) -> &Value {
        &self.doc
    }

    /// Ok if `body` (JSON) matches the schema of the documented response `status` of
    /// `method path`. `path` is the concrete request path, optionally with a query string
    /// (ignored); it is matched against the templated paths. Err with a readable message
    /// when the operation or the status is not documented, the response has no JSON
    /// content, or the body does not match (every validation error with its instance path).
    pub fn check_json(
        &self,
        method: &str,
        path: &str,
        status: u16,
        body: &Value,
    ) -> Result<(), String> {
        let method = method.to_ascii_uppercase();
        let (template, _) = self.operation(&method, path)?;
        let validator = self.validator(&method, &template, status)?;
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| {
                let at = e.instance_path().to_string();
                let at = if at.is_empty() {
                    "(root)".to_owned()
                } else {
                    at
                };
                format!("at {at}: {e} (schema {})", e.schema_path())
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{method} {path} → {status}: the body does not match {} ({} error{}):\n  {}\nbody: {}",
                self.schema_name(&method, &template, status),
                errors.len(),
                if errors.len() == 1 { "" } else { "s" },
                errors.join("\n  "),
                truncate(
                    &serde_json::to_string_pretty(body).unwrap_or_default(),
                    4000
                )
            ))
        }
    }

    /// Ok if the documented response `status` of `method path` exists and declares
    /// `content_type` (e.g. "text/plain" or a whole header value such as
    /// "text/plain; version=0.0.4; charset=utf-8": parameters are ignored on both sides,
    /// and the comparison is case-insensitive). For non-JSON responses like /metrics.
    pub fn check_documented(
        &self,
        method: &str,
        path: &str,
        status: u16,
        content_type: &str,
    ) -> Result<(), String> {
        let method = method.to_ascii_uppercase();
        let (template, _) = self.operation(&method, path)?;
        let response = self.response(&method, &template, status)?;
        let wanted = media_type(content_type);
        let declared: Vec<String> = response
            .get("content")
            .and_then(Value::as_object)
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default();
        if declared.iter().any(|d| media_type(d) == wanted) {
            Ok(())
        } else {
            Err(format!(
                "{method} {path} → {status} ({template}): content type {content_type:?} is not documented; documented: {}",
                if declared.is_empty() {
                    "none".to_owned()
                } else {
                    declared.join(", ")
                }
            ))
        }
    }

    /// Every (METHOD, templated path, status) documented, sorted. Tests assert each was
    /// exercised. Only numeric statuses are listed (not `default` or `4XX`).
    pub fn documented(&self) -> Vec<(String, String, u16)> {
        let mut out = BTreeSet::new();
        for (template, method, op) in self.operations() {
            if let Some(responses) = op.get("responses").and_then(Value::as_object) {
                for key in responses.keys() {
                    if let Ok(status) = key.parse::<u16>() {
                        out.insert((method.to_ascii_uppercase(), template.clone(), status));
                    }
                }
            }
        }
        out.into_iter().collect()
    }

    /// Everything wrong with the document itself; empty if it is sound. Checks: OpenAPI
    /// 3.1; every local `$ref` resolves; every operation has responses, each with a
    /// description; every path parameter is declared; every operation that needs a token
    /// documents 401 with a `WWW-Authenticate` header; every JSON response schema compiles.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match self.doc.get("openapi").and_then(Value::as_str) {
            Some(v) if v.starts_with("3.1.") => {}
            other => problems.push(format!("`openapi` is {other:?}, not 3.1.x")),
        }
        let mut refs = Vec::new();
        collect_refs(&self.doc, "#", &mut refs);
        for (at, reference) in refs {
            if let Some(pointer) = reference.strip_prefix('#') {
                if self.doc.pointer(&unescape_uri_fragment(pointer)).is_none() {
                    problems.push(format!("{at}: $ref {reference:?} does not resolve"));
                }
            } else {
                problems.push(format!("{at}: $ref {reference:?} is not local"));
            }
        }
        if !problems.is_empty() {
            // Later checks follow references.
            return problems;
        }
        if let Some(schemas) = self
            .doc
            .pointer("/components/schemas")
            .and_then(Value::as_object)
        {
            for (name, schema) in schemas {
                if let Err(e) = jsonschema::draft202012::meta::validate(schema) {
                    problems.push(format!(
                        "components/schemas/{name}: not a valid JSON Schema 2020-12 schema: {e} (at {})",
                        e.instance_path()
                    ));
                }
            }
        }
        let operations = self.operations();
        if operations.is_empty() {
            problems.push("no operations".to_owned());
        }
        let global_security = self.doc.get("security");
        for (template, method, op) in &operations {
            let name = format!("{} {template}", method.to_ascii_uppercase());
            let responses = op.get("responses").and_then(Value::as_object);
            let Some(responses) = responses.filter(|r| !r.is_empty()) else {
                problems.push(format!("{name}: no responses"));
                continue;
            };
            for field in ["summary", "description"] {
                if op
                    .get(field)
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    problems.push(format!("{name}: no {field}"));
                }
            }
            for (status, response) in responses {
                let response = self.deref(response);
                if response
                    .get("description")
                    .and_then(Value::as_str)
                    .is_none()
                {
                    problems.push(format!("{name} → {status}: no description"));
                }
            }
            // Path parameters: declared on the path item or the operation.
            let mut declared = BTreeSet::new();
            let item_params = self.doc["paths"][template.as_str()].get("parameters");
            for params in [item_params, op.get("parameters")].into_iter().flatten() {
                for p in params.as_array().into_iter().flatten() {
                    let p = self.deref(p);
                    if p.get("in").and_then(Value::as_str) == Some("path")
                        && let Some(n) = p.get("name").and_then(Value::as_str)
                    {
                        declared.insert(n.to_owned());
                    }
                }
            }
            for segment in template.split('/') {
                if let Some(param) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}'))
                    && !declared.contains(param)
                {
                    problems.push(format!("{name}: path parameter {param:?} is not declared"));
                }
            }
            // Security: an operation's own `security` overrides the global one.
            let security = op.get("security").or(global_security);
            let secured = security.and_then(Value::as_array).is_some_and(|reqs| {
                !reqs.is_empty()
                    && reqs
                        .iter()
                        .all(|r| r.as_object().is_some_and(|o| !o.is_empty()))
            });
            if template.starts_with("/v1/") && !secured {
                problems.push(format!("{name}: under /v1 but does not require a token"));
            }
            if secured {
                match responses.get("401").map(|r| self.deref(r)) {
                    None => {
                        problems.push(format!("{name}: needs a token but does not document 401"))
                    }
                    Some(r) => {
                        let has_header =
                            r.get("headers")
                                .and_then(Value::as_object)
                                .is_some_and(|h| {
                                    h.keys().any(|k| k.eq_ignore_ascii_case("www-authenticate"))
                                });
                        if !has_header {
                            problems.push(format!("{name} → 401: no WWW-Authenticate header"));
                        }
                    }
                }
            }
            for (status, response) in responses {
                let Ok(code) = status.parse::<u16>() else {
                    continue;
                };
                let response = self.deref(response);
                let json = response
                    .get("content")
                    .and_then(Value::as_object)
                    .is_some_and(|c| c.keys().any(|k| is_json(k)));
                if json && let Err(e) = self.validator(&method.to_ascii_uppercase(), template, code)
                {
                    problems.push(e);
                }
            }
        }
        problems
    }

    // --- internals ---

    /// Every (templated path, method, operation) of the document.
    fn operations(&self) -> Vec<(String, String, &Value)> {
        let mut out = Vec::new();
        if let Some(paths) = self.doc.get("paths").and_then(Value::as_object) {
            for (template, item) in paths {
                for method in METHODS {
                    if let Some(op) = item.get(method) {
                        out.push((template.clone(), method.to_owned(), op));
                    }
                }
            }
        }
        out
    }

    /// The templated path and operation of `method` (upper case) on the concrete `path`.
    /// Among matching templates the one with the most literal segments wins.
    fn operation(&self, method: &str, path: &str) -> Result<(String, &Value), String> {
        let bare = path.split(['?', '#']).next().unwrap_or("");
        let paths = self
            .doc
            .get("paths")
            .and_then(Value::as_object)
            .ok_or_else(|| format!("{}: no paths", self.source))?;
        let mut best: Option<(usize, &String, &Value)> = None;
        for (template, item) in paths {
            if let Some(literals) = template_matches(template, bare)
                && best.is_none_or(|(n, _, _)| literals > n)
            {
                best = Some((literals, template, item));
            }
        }
        let Some((_, template, item)) = best else {
            return Err(format!(
                "{method} {path}: no documented path matches {bare:?}; documented: {}",
                paths.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        };
        match item.get(method.to_ascii_lowercase()) {
            Some(op) => Ok((template.clone(), op)),
            None => Err(format!(
                "{method} {path}: {template} documents no {method}; it documents {}",
                METHODS
                    .iter()
                    .filter(|m| item.get(**m).is_some())
                    .map(|m| m.to_ascii_uppercase())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// The response object (references followed) documented for `status`: the exact code,
    /// else its range (`4XX`), else `default`.
    fn response(&self, method: &str, template: &str, status: u16) -> Result<&Value, String> {
        let op = &self.doc["paths"][template][method.to_ascii_lowercase()];
        let responses = op
            .get("responses")
            .and_then(Value::as_object)
            .ok_or_else(|| format!("{method} {template}: no responses documented"))?;
        let range = format!("{}XX", status / 100);
        let response = [status.to_string(), range, "default".to_owned()]
            .iter()
            .find_map(|k| responses.get(k))
            .ok_or_else(|| {
                format!(
                    "{method} {template}: status {status} is not documented; documented: {}",
                    responses.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?;
        Ok(self.deref(response))
    }

    /// The JSON schema of the documented response.
    fn json_schema(&self, method: &str, template: &str, status: u16) -> Result<&Value, String> {
        let response = self.response(method, template, status)?;
        let content = response.get("content").and_then(Value::as_object);
        let Some((_, media)) = content.and_then(|c| c.iter().find(|(k, _)| is_json(k))) else {
            return Err(format!(
                "{method} {template} → {status}: no JSON content is documented (content: {})",
                content
                    .map(|c| c.keys().cloned().collect::<Vec<_>>().join(", "))
                    .unwrap_or_else(|| "none".to_owned())
            ));
        };
        media.get("schema").ok_or_else(|| {
            format!("{method} {template} → {status}: the JSON content has no schema")
        })
    }

    /// A name for the schema of the documented response, for messages.
    fn schema_name(&self, method: &str, template: &str, status: u16) -> String {
        match self.json_schema(method, template, status) {
            Ok(schema) => match schema.get("$ref").and_then(Value::as_str) {
                Some(r) => r.rsplit('/').next().unwrap_or(r).to_owned(),
                None => format!("the schema of {method} {template} → {status}"),
            },
            Err(_) => "?".to_owned(),
        }
    }

    /// The compiled validator of the documented response (cached).
    fn validator(
        &self,
        method: &str,
        template: &str,
        status: u16,
    ) -> Result<Arc<jsonschema::Validator>, String> {
        let key = (method.to_owned(), template.to_owned(), status);
        if let Some(v) = self.lock().get(&key) {
            return Ok(v.clone());
        }
        let schema = self.json_schema(method, template, status)?;
        let mut root = Map::new();
        root.insert(
            "$schema".to_owned(),
            json!("https://json-schema.org/draft/2020-12/schema"),
        );
        match schema.get("$ref").and_then(Value::as_str) {
            // The usual case: a reference into components, which resolves as is.
            Some(r)
                if schema.as_object().is_some_and(|o| o.len() == 1)
                    && r.starts_with("#/components/") =>
            {
                root.insert("$ref".to_owned(), json!(r));
            }
            // An inline schema: its own references point into components too.
            _ => {
                root.insert("allOf".to_owned(), json!([schema]));
            }
        }
        root.insert(
            "components".to_owned(),
            self.doc
                .get("components")
                .cloned()
                .unwrap_or_else(|| json!({})),
        );
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&Value::Object(root))
            .map_err(|e| {
                format!("{method} {template} → {status}: the response schema does not compile: {e}")
            })?;
        let validator = Arc::new(validator);
        self.lock().insert(key, validator.clone());
        Ok(validator)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, String, u16), Arc<jsonschema::Validator>>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.validators.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows a local `$ref` (repeatedly); returns the value itself if it is none.
    fn deref<'a>(&'a self, mut value: &'a Value) -> &'a Value {
        for _ in 0..16 {
            let Some(r) = value.get("$ref").and_then(Value::as_str) else {
                break;
            };
            match r
                .strip_prefix('#')
                .and_then(|p| self.doc.pointer(&unescape_uri_fragment(p)))
            {
                Some(target) => value = target,
                None => break,
            }
        }
        value
    }
}

/// The number of literal segments if `template` ("/v1/applications/{id}") matches the
/// concrete `path`, else `None`. A trailing slash is not significant.
fn template_matches(template: &str, path: &str) -> Option<usize> {
    let t: Vec<&str> = template.trim_end_matches('/').split('/').collect();
    let p: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    if t.len() != p.len() {
        return None;
    }
    let mut literals = 0;
    for (ts, ps) in t.iter().zip(&p) {
        if ts.starts_with('{') && ts.ends_with('}') {
            if ps.is_empty() {
                return None;
            }
        } else if ts == ps {
            literals += 1;
        } else {
            return None;
        }
    }
    Some(literals)
}

/// `text` cut to at most `max` bytes (on a character boundary), marked when cut.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], text.len())
}

/// The media type of a content type, lower case, without parameters.
fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether a media type is JSON (`application/json` or `…+json`).
fn is_json(content_type: &str) -> bool {
    let m = media_type(content_type);
    m == "application/json" || m.ends_with("+json")
}

/// Every `$ref` string in `value`, with the JSON pointer where it occurs.
fn collect_refs(value: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    if let Some(r) = v.as_str() {
                        out.push((at.to_owned(), r.to_owned()));
                    }
                } else {
                    let escaped = k.replace('~', "~0").replace('/', "~1");
                    collect_refs(v, &format!("{at}/{escaped}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                collect_refs(v, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Percent-decodes a URI fragment (a JSON pointer in a `$ref` may escape `{`, `}`, ...).
fn unescape_uri_fragment(fragment: &str) -> String {
    let bytes = fragment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
        {
            let hex = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
            out.push(hex(bytes[i + 1]) * 16 + hex(bytes[i + 2]));
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
