//! The console's server side (`/ui`): sign-in and its cookie, CSRF on every change, a clerk's
//! scope, masking in the HTML, and the bulk dead-letter actions of the library it uses.

use std::time::Duration;

use crate::common::{Person, TestApp};
use uidflow::dead_letters::{self, BulkAction, Filter};

/// A browser-like client: one session cookie, no redirects followed.
struct Browser {
    base: String,
    http: reqwest::Client,
    cookie: Option<String>,
}

struct Page {
    status: u16,
    location: Option<String>,
    set_cookie: Option<String>,
    html: String,
}

impl Browser {
    fn new(app: &TestApp) -> Self {
        Self {
            base: app.api.clone().expect("the API runs"),
            http: uidflow::http::client(Duration::from_secs(10)),
            cookie: None,
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let request = match &self.cookie {
            Some(cookie) => request.header("Cookie", cookie),
            None => request,
        };
        let response = request.send().await.expect("the API answers");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (location, set_cookie) = (header("location"), header("set-cookie"));
        if let Some(set) = &set_cookie {
            let pair = set.split(';').next().unwrap().to_owned();
            self.cookie = (!pair.ends_with('=')).then_some(pair);
        }
        Page {
            status: response.status().as_u16(),
            location,
            set_cookie,
            html: response.text().await.expect("a body"),
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let request = self.http.get(format!("{}{path}", self.base));
        self.send(request).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)], origin: Option<&str>) -> Page {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(origin) = origin {
            request = request.header("Origin", origin);
        }
        self.send(request).await
    }

    async fn sign_in(&mut self, token: &str) -> Page {
        self.post("/ui/sign-in", &[("token", token)], None).await
    }

    /// The CSRF token of the page at `path` (every signed-in page carries it).
    async fn csrf(&mut self, path: &str) -> String {
        let page = self.get(path).await;
        let at = page
            .html
            .find("name=\"csrf\" value=\"")
            .expect("a CSRF field");
        page.html[at + 19..at + 19 + 64].to_owned()
    }
}

#[tokio::test]
async fn sign_in_sets_a_strict_http_only_cookie_and_every_change_needs_the_csrf_token() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);

    let page = browser.get("/ui/overview").await;
    assert_eq!(
        (page.status, page.location.as_deref()),
        (303, Some("/ui/sign-in"))
    );
    let page = browser.sign_in("not-a-token").await;
    assert_eq!(page.status, 401);
    assert!(page.set_cookie.is_none() && page.html.contains("not valid"));

    let page = browser.sign_in(&app.tokens["operator"]).await;
    assert_eq!(
        (page.status, page.location.as_deref()),
        (303, Some("/ui/overview"))
    );
    let cookie = page.set_cookie.expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(flag), "{flag} in {cookie}");
    }
    assert!(
        !cookie.contains(&app.tokens["operator"]),
        "the cookie is a session id, not the token"
    );
    let overview = browser.get("/ui/overview").await;
    assert_eq!(overview.status, 200, "{}", overview.html);
    assert!(overview.html.contains("dead letters waiting"));

    // A change without the CSRF token, with another one, or from another site is refused.
    let csrf = browser.csrf("/ui/overview").await;
    for (form, origin) in [
        (vec![], None),
        (vec![("csrf", "0".repeat(64))], None),
        (vec![("csrf", csrf.clone())], Some("http://evil.example")),
    ] {
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let refused = browser.post("/ui/sign-out", &form, origin).await;
        assert_eq!(refused.status, 403, "{form:?} {origin:?}");
    }
    assert_eq!(
        browser.get("/ui/overview").await.status,
        200,
        "still signed in"
    );
    let out = browser
        .post("/ui/sign-out", &[("csrf", csrf.as_str())], None)
        .await;
    assert_eq!(out.status, 303);
    assert!(out.set_cookie.unwrap().contains("Max-Age=0"));
    assert_eq!(browser.get("/ui/overview").await.status, 303);
    app.stop().await;
}

#[tokio::test]
async fn a_clerk_sees_only_their_service_masked_and_no_operator_page() {
    let app = TestApp::spawn().await;
    let person = Person::new(80);
    let own = person.application("block");
    let own_id = own["application_id"].as_str().unwrap().to_owned();
    let mut other = Person::new(81).application("block");
    other["issuing_service"]["code"] = "grodno-okt-oa".into();
    let other_id = other["application_id"].as_str().unwrap().to_owned();
    app.publish_application(&own).await;
    app.publish_application(&other).await;
    app.wait_for_application(&own_id).await;
    app.wait_for_application(&other_id).await;

    let mut clerk = Browser::new(&app);
    let page = clerk.sign_in(&app.tokens["clerk-minsk-sov-oa"]).await;
    assert_eq!(page.location.as_deref(), Some("/ui/applications"));
    let list = clerk.get("/ui/applications").await;
    assert!(list.html.contains(&own_id) && !list.html.contains(&other_id));
    let mine = clerk.get(&format!("/ui/applications/{own_id}")).await;
    assert_eq!(mine.status, 200);
    let masked = uidflow::domain::mask_identification_number(&person.identification_number);
    assert!(mine.html.contains(&masked), "the masked number is shown");
    assert!(!mine.html.contains(&person.identification_number));
    let theirs = clerk.get(&format!("/ui/applications/{other_id}")).await;
    let unknown = clerk
        .get(&format!("/ui/applications/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!((theirs.status, unknown.status), (404, 404));
    for path in [
        "/ui/overview",
        "/ui/dead-letters",
        "/ui/audit",
        "/ui/dead-letters/bulk?action=replay",
    ] {
        assert_eq!(clerk.get(path).await.status, 403, "{path}");
    }
    // Another site cannot make the clerk type a code, even with a valid session.
    let csrf = clerk.csrf("/ui/applications").await;
    let forged = clerk
        .post(
            &format!("/ui/applications/{own_id}/confirm"),
            &[("csrf", "x"), ("code", "123456")],
            None,
        )
        .await;
    assert_eq!(forged.status, 403);
    let wrong_service = clerk
        .post(
            &format!("/ui/applications/{other_id}/confirm"),
            &[("csrf", csrf.as_str()), ("code", "123456")],
            None,
        )
        .await;
    assert_eq!(wrong_service.status, 404);
    app.stop().await;
}

/// A bulk action applies to what its preview counted: letters parked after the preview stay
/// parked. Each one is recorded as a single action would be, and appears in the audit; letters
/// a replay cannot put back are skipped and said so.
#[tokio::test]
async fn a_bulk_action_applies_to_the_previewed_set_and_each_enters_the_audit() {
    let app = TestApp::spawn().await;
    for n in 0..3 {
        app.publish("application", format!("not json {n}").as_bytes(), None)
            .await;
    }
    app.wait_for_dead_letters(3).await;
    let filter = Filter {
        kind: Some("malformed".into()),
        ..Filter::default()
    };
    let replay = dead_letters::bulk_preview(&app.pool, &filter, BulkAction::Replay, 10)
        .await
        .unwrap();
    assert_eq!(
        (replay.count, replay.applicable),
        (3, 0),
        "malformed letters cannot be replayed"
    );
    let preview = dead_letters::bulk_preview(&app.pool, &filter, BulkAction::Discard, 2)
        .await
        .unwrap();
    assert_eq!((preview.count, preview.items.len()), (3, 2));
    app.publish("application", b"not json, later", None).await;
    app.wait_for_dead_letters(4).await;

    let skipped = dead_letters::bulk_apply(
        &app.pool,
        &app.vault,
        &preview.filter,
        BulkAction::Replay,
        "operator",
        "try",
    )
    .await
    .unwrap();
    assert_eq!((skipped.done.len(), skipped.skipped.len()), (0, 3));
    let outcome = dead_letters::bulk_apply(
        &app.pool,
        &app.vault,
        &preview.filter,
        BulkAction::Discard,
        "operator",
        "junk from a test sender",
    )
    .await
    .unwrap();
    assert_eq!(outcome.done.len(), 3);
    let parked = dead_letters::bulk_preview(&app.pool, &filter, BulkAction::Discard, 10)
        .await
        .unwrap();
    assert_eq!(parked.count, 1, "the letter parked after the preview stays");
    let (audit, _) = dead_letters::audit(&app.pool, 10, None).await.unwrap();
    assert_eq!(audit.len(), 3);
    assert!(audit.iter().all(|e| e.action == "discarded"
        && e.by == "operator"
        && e.reason == "junk from a test sender"));

    // The console shows the same: the audit page lists them, the preview counts the one left.
    let mut operator = Browser::new(&app);
    operator.sign_in(&app.tokens["operator"]).await;
    let page = operator.get("/ui/audit").await;
    assert_eq!(page.html.matches("junk from a test sender").count(), 3);
    let page = operator
        .get("/ui/dead-letters/bulk?action=discard&kind=malformed")
        .await;
    assert!(
        page.html.contains("<strong>1</strong> parked"),
        "{}",
        page.html
    );
    app.stop().await;
}

/// The same bulk action over the HTTP API (what `uidflow dead-letters replay|discard` with
/// filters uses): a preview, a refusal without its `through_id`, then the action; the list
/// takes the same filters. Each answer matches the OpenAPI document.
#[tokio::test]
async fn the_api_previews_then_applies_a_bulk_discard_and_lists_by_filter() {
    use serde_json::json;
    let app = TestApp::spawn().await;
    let openapi = crate::common::openapi::OpenApi::load();
    for n in 0..2 {
        app.publish("application", format!("not json {n}").as_bytes(), None)
            .await;
    }
    app.wait_for_dead_letters(2).await;
    let path = "/v1/dead-letters/bulk";
    let listed = app
        .call(
            "GET",
            "/v1/dead-letters?kind=malformed&step=intake&error=NOT%20JSON",
            Some("operator"),
            None,
        )
        .await;
    assert_eq!(
        listed.json["items"].as_array().unwrap().len(),
        2,
        "{}",
        listed.text
    );
    let none = app
        .call(
            "GET",
            "/v1/dead-letters?step=register",
            Some("operator"),
            None,
        )
        .await;
    assert_eq!(none.json["items"].as_array().unwrap().len(), 0);
    let clerk = app
        .call(
            "POST",
            path,
            Some("clerk-minsk-sov-oa"),
            Some(json!({"action": "discard", "preview": true})),
        )
        .await;
    assert_eq!(clerk.status, 403);
    let preview = app
        .call(
            "POST",
            path,
            Some("operator"),
            Some(json!({"action": "discard", "preview": true, "kind": "malformed"})),
        )
        .await;
    assert_eq!(preview.status, 200, "{}", preview.text);
    openapi
        .check_json("POST", path, 200, &preview.json)
        .unwrap();
    assert_eq!(preview.json["count"], 2);
    let through = preview.json["through_id"].as_i64().unwrap();
    let refused = app
        .call(
            "POST",
            path,
            Some("operator"),
            Some(json!({"action": "discard", "kind": "malformed", "reason": "junk"})),
        )
        .await;
    assert_eq!(refused.status, 400, "a bulk action needs its preview");
    openapi
        .check_json("POST", path, 400, &refused.json)
        .unwrap();
    let done = app
        .call(
            "POST",
            path,
            Some("operator"),
            Some(json!({"action": "discard", "kind": "malformed", "reason": "junk", "through_id": through})),
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.text);
    openapi.check_json("POST", path, 200, &done.json).unwrap();
    assert_eq!(done.json["done"].as_array().unwrap().len(), 2);
    let left = app
        .call("GET", "/v1/dead-letters", Some("operator"), None)
        .await;
    assert_eq!(left.json["items"].as_array().unwrap().len(), 0);
    app.stop().await;
}
