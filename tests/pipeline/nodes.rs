//! `AMQP_URL` may list several nodes of one cluster (CONTRACT §8): uidflow connects to any
//! that answers and moves to another when its node goes away, consumers and publishers alike,
//! and nothing is lost or done twice. The second "node" here is a TCP proxy in front of the
//! machine's broker that the test can take down (every connection through it cut, new ones
//! refused), the way a node that stops looks to a client.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use uidflow::system::RunOptions;

use crate::common::{Person, TestApp, spawn_clerk};

/// A TCP proxy to the broker: counts the connections it carried; `down` cuts them all and
/// stops listening.
struct Node {
    port: u16,
    carried: Arc<AtomicUsize>,
    tasks: JoinSet<()>,
}

impl Node {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let carried = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        let count = Arc::clone(&carried);
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::Relaxed);
                connections.spawn(async move {
                    if let Ok(mut broker) = TcpStream::connect("127.0.0.1:5672").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                    }
                });
            }
            // Dropping `connections` (when this task is aborted) closes every socket.
        });
        Self {
            port,
            carried,
            tasks,
        }
    }

    async fn down(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

#[tokio::test]
async fn a_dead_node_is_skipped_and_the_loss_of_a_node_moves_every_connection_to_another() {
    let app = TestApp::prepare_pipeline("10m").await;
    let node = Node::start().await;
    let real = app.settings.amqp_nodes()[0].clone();
    let proxied = real.replace(":5672/", &format!(":{}/", node.port));
    let dead = real.replace(":5672/", ":1/");
    assert!(proxied != real && dead != real, "{real}");
    // A node that refuses, the proxy twice (so that most connections start there), the broker.
    let mut settings = app.settings.clone();
    settings.amqp_url = format!("{dead}, {proxied},{proxied},{real}").into();
    let app = app
        .start_pipeline_as(&settings, RunOptions::default())
        .await;
    let token = tokio_util::sync::CancellationToken::new();
    let clerk = spawn_clerk(&app, token.clone()).await;

    let people: Vec<Person> = (0..16).map(|n| Person::new(4300 + n)).collect();
    // The clerk types each code back; the test waits for the ends.
    let mut ids = app.publish_issues(&people[..8]).await;
    for id in &ids {
        app.wait_for_status(id, "completed").await;
    }
    let carried = node.carried.load(Ordering::Relaxed);
    assert!(
        carried > 0,
        "some of uidflow's connections went through the proxied node"
    );

    // The node goes away with every connection through it; the next applications (published
    // at once, while consumers and relays reconnect) all complete exactly once.
    node.down().await;
    let later = app.publish_issues(&people[8..]).await;
    for id in &later {
        app.wait_for_status(id, "completed").await;
    }
    ids.extend(later);
    token.cancel();
    clerk.await.unwrap();
    app.each_completed_once(&ids, &people).await;
    app.stop().await;
}
