//! A simulator that can really go away: [`Switchable`] serves a router on a fixed address and
//! can be taken [`down`](Switchable::down) — the listener is closed and every connection with
//! it, so a client's connection is refused, as with a gateway that crashed — and brought back
//! [`up`](Switchable::up) on the same address. The state behind the router (accepted messages,
//! faults) is untouched by either, so what was sent before an outage can still be read back.
//!
//! This is a harsher fault than `Faults::outage` (every request answered 503): the client sees
//! a connection error, not an HTTP answer. `uidflow chaos` uses it for the SMS gateway.

use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A router served on a fixed address that can be switched off and on.
#[derive(Debug)]
pub struct Switchable {
    addr: SocketAddr,
    router: Router,
    serving: Mutex<Option<Serving>>,
}

#[derive(Debug)]
struct Serving {
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl Switchable {
    /// Binds `addr` (port 0 picks a free port, kept for later [`Self::up`]) and starts serving.
    pub async fn start(addr: SocketAddr, router: Router) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let switchable = Self {
            addr,
            router,
            serving: Mutex::new(None),
        };
        *switchable.serving.lock().await = Some(switchable.serve(listener));
        Ok(switchable)
    }

    /// Where it listens (when up).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// True while it serves.
    pub async fn is_up(&self) -> bool {
        self.serving.lock().await.is_some()
    }

    /// Closes the listener and every connection (requests in flight are answered first);
    /// returns once nothing listens on the address any more. Does nothing when already down.
    pub async fn down(&self) {
        if let Some(serving) = self.serving.lock().await.take() {
            serving.stop.cancel();
            match serving.task.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "a switchable simulator stopped with an error")
                }
                Err(error) => tracing::warn!(%error, "a switchable simulator task failed"),
            }
        }
    }

    /// Listens again on the same address. Does nothing when already up.
    pub async fn up(&self) -> std::io::Result<()> {
        let mut serving = self.serving.lock().await;
        if serving.is_none() {
            let listener = TcpListener::bind(self.addr).await?;
            *serving = Some(self.serve(listener));
        }
        Ok(())
    }

    fn serve(&self, listener: TcpListener) -> Serving {
        let stop = CancellationToken::new();
        let router = self.router.clone();
        let shutdown = stop.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        });
        Serving { stop, task }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::sim::{Faults, SmsSim};

    fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    }

    async fn send(client: &reqwest::Client, addr: SocketAddr) -> Result<u16, reqwest::Error> {
        let body = json!({"message_id": Uuid::new_v4(), "phone": "+375291234567", "text": "Hi"});
        let response = client
            .post(format!("http://{addr}/sms/v1/messages"))
            .json(&body)
            .send()
            .await?;
        Ok(response.status().as_u16())
    }

    #[tokio::test]
    async fn down_refuses_connections_even_kept_alive_ones_and_up_serves_the_same_state_again() {
        let sms = SmsSim::new(Faults::default(), crate::sim::SimToken::generate());
        let router = Router::new().nest("/sms", sms.router());
        let switchable = Switchable::start("127.0.0.1:0".parse().unwrap(), router)
            .await
            .unwrap();
        let addr = switchable.addr();
        // One client throughout, so a pooled keep-alive connection would be reused if it
        // survived the outage.
        let client = client();
        assert_eq!(send(&client, addr).await.unwrap(), 202);

        switchable.down().await;
        assert!(!switchable.is_up().await);
        for _ in 0..3 {
            let error = send(&client, addr).await.unwrap_err();
            assert!(error.is_connect(), "connection refused, not {error}");
        }
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());

        switchable.up().await.unwrap();
        switchable.up().await.unwrap();
        assert!(switchable.is_up().await);
        assert_eq!(switchable.addr(), addr);
        assert_eq!(send(&client, addr).await.unwrap(), 202);
        // What was accepted before the outage is still there; nothing arrived during it.
        assert_eq!(sms.messages_to("+375291234567").len(), 2);
        assert_eq!(sms.requests(), 2);
        switchable.down().await;
        switchable.down().await;
    }
}
