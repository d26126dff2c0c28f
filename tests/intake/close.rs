//! Closing a connection whose broker stopped answering returns (`amqp::close`): lapin's own
//! close waits for a `close-ok` that never comes. `uidflow chaos` saw it during broker
//! restarts: a consumer stuck in the close never reconnected, and its process did not stop on
//! SIGTERM. The broker is reached through a proxy that goes silent on demand.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uidflow::amqp::CLOSE_TIMEOUT;

/// Copies `from` to `to` until `silent` is set; after that reads and drops everything, and
/// keeps both sockets open (a peer that is there but never answers).
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !silent.load(Ordering::SeqCst) && to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn closing_a_connection_to_a_broker_that_went_silent_returns_within_the_bound() {
    let broker_url =
        std::env::var("AMQP_URL").unwrap_or_else(|_| uidflow::config::DEFAULT_AMQP_URL.to_owned());
    let mut url = url::Url::parse(&broker_url).unwrap();
    let upstream = format!(
        "{}:{}",
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(5672)
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    let silent = Arc::new(AtomicBool::new(false));
    let switch = Arc::clone(&silent);
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(upstream).await.unwrap();
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        tokio::spawn(pipe(client_read, server_write, Arc::clone(&switch)));
        pipe(server_read, client_write, switch).await;
    });
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(proxy.port())).unwrap();
    let connection = lapin::Connection::connect(url.as_str(), Default::default())
        .await
        .expect("connects through the proxy");
    assert!(connection.status().connected());

    silent.store(true, Ordering::SeqCst);
    let started = Instant::now();
    uidflow::amqp::close(&connection, 200, "test").await;
    let took = started.elapsed();
    assert!(
        took >= CLOSE_TIMEOUT - Duration::from_millis(100),
        "the close did wait for the broker ({took:?}), so unbounded it would have hung"
    );
    assert!(
        took < CLOSE_TIMEOUT + Duration::from_secs(2),
        "the close returned within its bound: {took:?}"
    );
}
