//! The applications that flow through the faults, and the people around them: an intake
//! system that publishes with confirms (and publishes again, same bytes, until confirmed), the
//! follow-ups of each person's story (block after issue, then unblock; a change of phone), and
//! a clerk who types back codes from the SMS simulator. The [`Book`] remembers what was sent
//! and what each application should end as, for the accounting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::Connection;
use rand::Rng;
use rand::rngs::StdRng;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uidflow::amqp::{Outgoing, PublishResult, Publisher};
use uidflow::config::Settings;
use uidflow::sim::{MvdAnswer, Simulators, TEST_PEOPLE};
use uidflow::topology::{APPLICATION_ROUTING_KEY, INTAKE_EXCHANGE, PHONE_CONFIRMATION_ROUTING_KEY};
use uuid::Uuid;

/// What an application should end as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// `completed`.
    Completed,
    /// `rejected` with this reason code.
    Rejected(&'static str),
    /// The clerk never types the code: `awaiting_phone_confirmation` until the code expires,
    /// then `rejected` with `phone_not_confirmed`.
    CodeNeverTyped,
}

/// A made-up applicant.
#[derive(Debug, Clone)]
pub struct Person {
    /// The identification number (= the UID once issued).
    pub uid: String,
    /// Date of birth, `YYYY-MM-DD`.
    pub date_of_birth: String,
    /// The phones of their story: the one they are issued with, then a new one.
    pub phones: Vec<String>,
}

impl Person {
    /// A distinct valid person for each `n` below 18 000.
    pub fn new(n: u32) -> Self {
        let born = chrono::NaiveDate::from_ymd_opt(1950, 1, 1).expect("a date")
            + chrono::Duration::days(i64::from(n % 18_000));
        let century = if chrono::Datelike::year(&born) < 2000 {
            3
        } else {
            5
        };
        let first13 = format!("{century}{}C{:03}PB", born.format("%d%m%y"), n % 1000);
        let digit = uidflow::domain::check_digit(&first13).expect("valid characters");
        Self {
            uid: format!("{first13}{digit}"),
            date_of_birth: born.format("%Y-%m-%d").to_string(),
            phones: vec![format!("+37529{n:07}"), format!("+37544{n:07}")],
        }
    }

    /// One of the MVD simulator's test people (index into `TEST_PEOPLE`).
    fn from_test_table(index: usize) -> Self {
        let person = &TEST_PEOPLE[index];
        Self {
            uid: person.identification_number.to_owned(),
            date_of_birth: person.date_of_birth.to_owned(),
            phones: vec![format!("+37533{:07}", 5_000_000 + index)],
        }
    }
}

/// One application sent.
#[derive(Debug, Clone)]
pub struct App {
    /// Its id.
    pub id: Uuid,
    /// `issue`, `block`, `unblock`, `change_phone`.
    pub kind: &'static str,
    /// Index into [`Book::persons`].
    pub person: usize,
    /// The phone it carries (issue, change_phone).
    pub phone: Option<String>,
    /// What it should end as.
    pub expect: Expect,
    /// Index into [`Book::chains`].
    pub chain: usize,
    /// The exact bytes published (the same on every re-publish).
    pub body: Vec<u8>,
    /// The broker confirmed it.
    pub confirmed: bool,
}

/// One step of a person's story.
#[derive(Debug, Clone, Copy)]
struct Planned {
    kind: &'static str,
    expect: Expect,
    /// Which of the person's phones the application carries.
    phone: Option<usize>,
}

/// A person's story: applications sent one after the other, each once the previous completed.
#[derive(Debug, Clone)]
pub struct Chain {
    /// Which story.
    pub template: &'static str,
    /// Index into [`Book::persons`].
    pub person: usize,
    steps: Vec<Planned>,
    next: usize,
    /// The application in flight.
    pub current: Option<Uuid>,
    /// Nothing more to send.
    pub done: bool,
}

/// The stories and how often each is told (weights). `block_or_unblock` takes a person whose
/// earlier story ended with a UID and nothing in flight, and blocks it (or unblocks it, if
/// blocked): these reach `send-sms` without waiting for a code, also while the SMS gateway is
/// down. With nobody available it is an `issue`.
pub const TEMPLATES: [(&str, u32); 7] = [
    ("issue", 45),
    ("issue_block_unblock", 10),
    ("issue_change_phone", 10),
    ("block_or_unblock", 20),
    ("block_not_issued", 6),
    ("mvd_refuses", 5),
    ("code_never_typed", 4),
];

/// Everything sent, and what it should end as.
#[derive(Debug, Default)]
pub struct Book {
    /// Everyone who applied.
    pub persons: Vec<Person>,
    /// Every application made (confirmed or not).
    pub apps: Vec<App>,
    /// Application id → index into `apps`.
    pub index: HashMap<Uuid, usize>,
    /// Every story.
    pub chains: Vec<Chain>,
    /// `TEST_PEOPLE` index → index into `persons`.
    test_people: HashMap<usize, usize>,
    /// People with a UID and no story in flight, and whether their UID is blocked.
    idle: Vec<(usize, bool)>,
}

fn reason_for(answer: MvdAnswer) -> &'static str {
    match answer {
        MvdAnswer::Match => "none",
        MvdAnswer::Mismatch { .. } => "identity_mismatch",
        MvdAnswer::NotFound => "identity_not_found",
        MvdAnswer::DocumentInvalid { .. } => "document_invalid",
    }
}

impl Book {
    /// Starts a new story of `template` and returns the index of its first application.
    pub fn new_chain(&mut self, template: &'static str, rng: &mut StdRng) -> usize {
        use Expect::{CodeNeverTyped, Completed, Rejected};
        let step = |kind, expect, phone| Planned {
            kind,
            expect,
            phone,
        };
        let template = if template == "block_or_unblock" && self.idle.is_empty() {
            "issue"
        } else {
            template
        };
        let (person, steps) = if template == "block_or_unblock" {
            let (person, blocked) = self.idle.swap_remove(rng.random_range(0..self.idle.len()));
            let kind = if blocked { "unblock" } else { "block" };
            (person, vec![step(kind, Completed, None)])
        } else if template == "mvd_refuses" {
            // The test people the MVD refuses (the last entry of the table matches).
            let index = rng.random_range(0..TEST_PEOPLE.len() - 1);
            let person = *self.test_people.entry(index).or_insert_with(|| {
                self.persons.push(Person::from_test_table(index));
                self.persons.len() - 1
            });
            let reason = reason_for(TEST_PEOPLE[index].expected);
            (person, vec![step("issue", Rejected(reason), Some(0))])
        } else {
            self.persons.push(Person::new(self.persons.len() as u32));
            let steps = match template {
                "issue_block_unblock" => vec![
                    step("issue", Completed, Some(0)),
                    step("block", Completed, None),
                    step("unblock", Completed, None),
                ],
                "issue_change_phone" => vec![
                    step("issue", Completed, Some(0)),
                    step("change_phone", Completed, Some(1)),
                ],
                "block_not_issued" => vec![step("block", Rejected("not_issued"), None)],
                "code_never_typed" => vec![step("issue", CodeNeverTyped, Some(0))],
                _ => vec![step("issue", Completed, Some(0))],
            };
            (self.persons.len() - 1, steps)
        };
        self.chains.push(Chain {
            template,
            person,
            steps,
            next: 0,
            current: None,
            done: false,
        });
        self.advance(self.chains.len() - 1)
            .expect("a new story has a first application")
    }

    /// Makes the next application of story `chain`, or marks the story done.
    fn advance(&mut self, chain: usize) -> Option<usize> {
        let story = &mut self.chains[chain];
        let Some(planned) = story.steps.get(story.next).copied() else {
            story.done = true;
            story.current = None;
            return None;
        };
        story.next += 1;
        let person_index = story.person;
        let person = &self.persons[person_index];
        let phone = planned.phone.map(|p| person.phones[p].clone());
        let id = Uuid::new_v4();
        let mut body = json!({
            "application_id": id, "kind": planned.kind, "submitted_at": "2026-11-23T10:00:00+03:00",
            "issuing_service": {"code": "chaos-oa"},
            "applicant": {"surname": "Chaos", "given_name": "Test", "patronymic": null,
                "date_of_birth": person.date_of_birth, "identification_number": person.uid},
            "document": {"type": "passport", "number": "MP1234567"},
            "consent_to_verification": true
        });
        if let Some(phone) = &phone {
            body["phone"] = json!(phone);
            body["phone_use_attested"] = json!(true);
        }
        self.chains[chain].current = Some(id);
        self.apps.push(App {
            id,
            kind: planned.kind,
            person: person_index,
            phone,
            expect: planned.expect,
            chain,
            body: serde_json::to_vec(&body).expect("JSON serialises"),
            confirmed: false,
        });
        self.index.insert(id, self.apps.len() - 1);
        Some(self.apps.len() - 1)
    }

    /// The story moves on after its application `id` ended as `status`; the next application
    /// to send, if any.
    fn settled(&mut self, id: Uuid, status: &str) -> Option<usize> {
        let app = &self.apps[*self.index.get(&id)?];
        let chain = app.chain;
        if self.chains[chain].done || self.chains[chain].current != Some(id) {
            return None;
        }
        let never_typed = app.expect == Expect::CodeNeverTyped;
        let (kind, person) = (app.kind, app.person);
        match status {
            "completed" => {
                let next = self.advance(chain);
                let template = self.chains[chain].template;
                if next.is_none() && ["issue", "block_or_unblock"].contains(&template) {
                    // Told, with a UID: available for a block or an unblock.
                    self.idle.push((person, kind == "block"));
                }
                next
            }
            "rejected" | "failed" => {
                self.chains[chain].done = true;
                None
            }
            "awaiting_phone_confirmation" if never_typed => {
                // Nothing more will happen before the code expires; the story is told.
                self.chains[chain].done = true;
                None
            }
            _ => None,
        }
    }

    /// Stories still waiting for their current application to settle.
    pub fn open_chains(&self) -> usize {
        self.chains.iter().filter(|c| !c.done).count()
    }
}

/// Counts of what the intake system and the clerk did.
#[derive(Debug, Default)]
pub struct Counters {
    /// Publishes confirmed by the broker (applications and codes).
    pub confirmed: AtomicU64,
    /// Publishes sent again because the first try was not confirmed (broker down, channel lost).
    pub republished: AtomicU64,
    /// Applications published a second time on purpose, after their first confirm.
    pub duplicates: AtomicU64,
    /// Codes typed back.
    pub codes_typed: AtomicU64,
    /// Codes typed again because the application still waited 10 s later.
    pub codes_retyped: AtomicU64,
}

/// The intake system's publisher: confirms, and the same bytes again until confirmed.
pub struct Intake {
    settings: Settings,
    channel: tokio::sync::Mutex<Option<(Connection, Publisher)>>,
    counters: Arc<Counters>,
}

impl Intake {
    /// A publisher for `settings`' vhost (connects on first use).
    pub fn new(settings: Settings, counters: Arc<Counters>) -> Self {
        Self {
            settings,
            channel: tokio::sync::Mutex::new(None),
            counters,
        }
    }

    /// Publishes `body` to `uid.intake` with `routing_key` until the broker confirms it, or
    /// `deadline` passes (false).
    pub async fn publish(
        &self,
        routing_key: &str,
        id: Uuid,
        body: &[u8],
        deadline: Instant,
    ) -> bool {
        let message = Outgoing {
            exchange: INTAKE_EXCHANGE.into(),
            routing_key: routing_key.into(),
            message_id: Some(id.to_string()),
            content_type: Some("application/json".into()),
            headers: json!({}),
            body: body.to_vec(),
            mandatory: true,
            expiration_ms: None,
        };
        let mut first = true;
        while Instant::now() < deadline {
            if !first {
                self.counters.republished.fetch_add(1, Ordering::Relaxed);
                // A pause between tries while the broker is away.
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            first = false;
            let mut channel = self.channel.lock().await;
            if channel.as_ref().is_none_or(|(_, p)| !p.is_usable()) {
                *channel = None;
                let Ok(connection) =
                    uidflow::amqp::connect_once(&self.settings, "chaos-intake").await
                else {
                    continue;
                };
                let Ok(publisher) = Publisher::open(&connection).await else {
                    continue;
                };
                *channel = Some((connection, publisher));
            }
            let (_, publisher) = channel.as_ref().expect("connected above");
            let sent = tokio::time::timeout(
                Duration::from_secs(10),
                publisher.publish_all(std::slice::from_ref(&message)),
            )
            .await;
            match sent {
                Ok(Ok(results)) if results == [PublishResult::Confirmed] => {
                    self.counters.confirmed.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                // Refused (nack, unroutable): the channel is fine, try again.
                Ok(Ok(_)) => {}
                // The channel failed or hung: open another.
                Ok(Err(_)) | Err(_) => *channel = None,
            }
        }
        false
    }
}

/// What the traffic tasks share.
#[derive(Clone)]
pub struct Traffic {
    /// What was sent.
    pub book: Arc<Mutex<Book>>,
    /// The publisher.
    pub intake: Arc<Intake>,
    /// The scratch database (read only: statuses).
    pub pool: PgPool,
    /// The simulators (the clerk reads codes from the SMS one).
    pub sims: Simulators,
    /// Counts.
    pub counters: Arc<Counters>,
    /// Publishing gives up at this moment.
    pub deadline: Instant,
}

impl Traffic {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn send(&self, app: usize) {
        let (id, body) = {
            let book = self.book();
            (book.apps[app].id, book.apps[app].body.clone())
        };
        let confirmed = self
            .intake
            .publish(APPLICATION_ROUTING_KEY, id, &body, self.deadline)
            .await;
        self.book().apps[app].confirmed = confirmed;
    }

    /// The intake system: a new story every `1/rate` seconds until `until`; a few first
    /// applications are published twice (an intake system that re-sends is allowed to).
    pub async fn start_stories(self, rate: f64, until: Instant, mut rng: StdRng) {
        let started = Instant::now();
        let total: u32 = TEMPLATES.iter().map(|(_, w)| w).sum();
        let mut n = 0u32;
        while Instant::now() < until {
            let mut pick = rng.random_range(0..total);
            let template = TEMPLATES
                .iter()
                .find(|(_, w)| {
                    let hit = pick < *w;
                    pick = pick.saturating_sub(*w);
                    hit
                })
                .map_or("issue", |(t, _)| t);
            let app = self.book().new_chain(template, &mut rng);
            self.send(app).await;
            if rng.random_bool(0.03) {
                self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                self.send(app).await;
            }
            n += 1;
            // The pace of new stories (absolute, so an outage is followed by a catch-up).
            let next = started + Duration::from_secs_f64(f64::from(n) / rate);
            tokio::time::sleep_until(next.into()).await;
        }
    }

    /// Sends each story's next application once the previous one completed.
    pub async fn follow_stories(self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let current: Vec<Uuid> = {
                let book = self.book();
                book.chains
                    .iter()
                    .filter(|c| !c.done)
                    .filter_map(|c| c.current)
                    .collect()
            };
            if let Ok(rows) = statuses(&self.pool, &current).await {
                let next: Vec<usize> = {
                    let mut book = self.book();
                    rows.iter()
                        .filter_map(|(id, status)| book.settled(*id, status))
                        .collect()
                };
                for app in next {
                    self.send(app).await;
                }
            }
            // The pace of the follow-ups; not a wait for a condition.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The clerk: types back the newest code of each application that waits for one (except
    /// the stories where the code is never typed), again if it still waits 10 s later.
    pub async fn clerk(self, stop: CancellationToken) {
        let mut typed: HashMap<Uuid, (String, Instant)> = HashMap::new();
        while !stop.is_cancelled() {
            let waiting: Result<Vec<Uuid>, _> = sqlx::query_scalar(
                "SELECT application_id FROM applications WHERE status = 'awaiting_phone_confirmation'",
            )
            .fetch_all(&self.pool)
            .await;
            for id in waiting.unwrap_or_default() {
                let phone = {
                    let book = self.book();
                    let Some(app) = book.index.get(&id).map(|i| &book.apps[*i]) else {
                        continue;
                    };
                    if app.expect == Expect::CodeNeverTyped {
                        continue;
                    }
                    app.phone.clone()
                };
                let Some(phone) = phone else { continue };
                let newest = self
                    .sims
                    .messages_to(&phone)
                    .iter()
                    .rev()
                    .find_map(|m| uidflow::sms::texts::code_in(&m.text).map(str::to_owned));
                let Some(code) = newest else { continue };
                let again = match typed.get(&id) {
                    Some((last, at)) if *last == code => at.elapsed() >= Duration::from_secs(10),
                    _ => false,
                };
                if typed.get(&id).is_some_and(|(last, _)| *last == code) && !again {
                    continue;
                }
                let body = serde_json::to_vec(&json!({"application_id": id, "code": code}))
                    .expect("JSON serialises");
                if self
                    .intake
                    .publish(PHONE_CONFIRMATION_ROUTING_KEY, id, &body, self.deadline)
                    .await
                {
                    let counter = if again {
                        &self.counters.codes_retyped
                    } else {
                        &self.counters.codes_typed
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    typed.insert(id, (code, Instant::now()));
                }
            }
            // The clerk's pace; not a wait for a condition.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The statuses of `ids` that exist.
pub async fn statuses(pool: &PgPool, ids: &[Uuid]) -> sqlx::Result<Vec<(Uuid, String)>> {
    sqlx::query_as("SELECT application_id, status FROM applications WHERE application_id = ANY($1)")
        .bind(ids)
        .fetch_all(pool)
        .await
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn people_are_valid_and_distinct_and_so_are_their_phones() {
        let people: Vec<Person> = (0..3000).map(Person::new).collect();
        let uids: std::collections::HashSet<_> = people.iter().map(|p| p.uid.clone()).collect();
        let phones: std::collections::HashSet<_> =
            people.iter().flat_map(|p| p.phones.clone()).collect();
        assert_eq!((uids.len(), phones.len()), (3000, 6000));
        for person in &people[..50] {
            assert!(
                uidflow::domain::IdentificationNumber::parse(&person.uid).is_ok(),
                "{}",
                person.uid
            );
            assert!(uidflow::sim::sms::is_valid_phone(&person.phones[1]));
        }
    }

    #[test]
    fn a_story_sends_its_next_application_only_after_the_previous_completed() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut book = Book::default();
        let first = book.new_chain("issue_block_unblock", &mut rng);
        let id = book.apps[first].id;
        assert_eq!(book.apps[first].kind, "issue");
        assert_eq!(book.settled(id, "awaiting_phone_confirmation"), None);
        let block = book.settled(id, "completed").expect("the block follows");
        assert_eq!(book.apps[block].kind, "block");
        assert_eq!(
            book.settled(id, "completed"),
            None,
            "an old application moves nothing"
        );
        let unblock = book.settled(book.apps[block].id, "completed").unwrap();
        assert_eq!(book.apps[unblock].kind, "unblock");
        assert_eq!(book.open_chains(), 1);
        assert_eq!(book.settled(book.apps[unblock].id, "completed"), None);
        assert_eq!(book.open_chains(), 0);

        let never = book.new_chain("code_never_typed", &mut rng);
        assert_eq!(book.apps[never].expect, Expect::CodeNeverTyped);
        assert_eq!(
            book.settled(book.apps[never].id, "awaiting_phone_confirmation"),
            None
        );
        assert_eq!(book.open_chains(), 0);

        let change = book.new_chain("issue_change_phone", &mut rng);
        let next = book.settled(book.apps[change].id, "completed").unwrap();
        assert_ne!(book.apps[next].phone, book.apps[change].phone);
        // Nobody has a UID and nothing in flight yet: a block_or_unblock is an issue.
        let first = book.new_chain("block_or_unblock", &mut rng);
        assert_eq!(book.chains[book.apps[first].chain].template, "issue");
        assert_eq!(book.settled(book.apps[first].id, "completed"), None);
        let block = book.new_chain("block_or_unblock", &mut rng);
        assert_eq!(
            (book.apps[block].kind, book.apps[block].person),
            ("block", book.apps[first].person)
        );
        let issue = book.new_chain("block_or_unblock", &mut rng);
        assert_eq!(
            book.apps[issue].kind, "issue",
            "the only person with a UID is busy"
        );
        assert_eq!(book.settled(book.apps[block].id, "completed"), None);
        let unblock = book.new_chain("block_or_unblock", &mut rng);
        assert_eq!(
            (book.apps[unblock].kind, book.apps[unblock].person),
            ("unblock", book.apps[first].person)
        );
        let refused = book.new_chain("mvd_refuses", &mut rng);
        assert!(matches!(book.apps[refused].expect, Expect::Rejected(r) if r != "none"));
        assert_eq!(book.settled(book.apps[refused].id, "rejected"), None);
    }
}
