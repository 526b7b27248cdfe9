//! A small TCP proxy of the harness, in front of the replicas of one
//! service: every new connection goes to the next replica in turn (one that
//! refuses is skipped), so callers spread over both replicas and a killed
//! one is routed around. The schedule can switch a proxy on the calls
//! between services (a relay's, a feed consumer's, the gateway's webhooks)
//! to cut them without killing anyone:
//!
//! - [`Mode::Refuse`]: every open connection is cut and new ones are closed
//!   at once;
//! - [`Mode::Drop`]: open connections are cut; new ones carry the caller's
//!   bytes to the callee, which acts, but its answers are thrown away (the
//!   caller times out: did it happen?);
//! - [`Mode::Stall`]: open connections are cut; new ones are accepted and
//!   then nothing moves either way until the window ends.
//!
//! When the window ends every connection opened under it is closed, so the
//! callers reconnect through an open proxy.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

use crate::Result;

/// What the proxy does with the calls it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    Open,
    Refuse,
    Drop,
    Stall,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Refuse => "refused",
            Self::Drop => "answers dropped",
            Self::Stall => "stalled",
        }
    }
}

/// A proxy listening on its own address.
pub struct Proxy {
    pub addr: String,
    mode: watch::Sender<Mode>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a port the OS hands out, in front of `backends`.
    pub async fn start(backends: Vec<String>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (mode, watch) = watch::channel(Mode::Open);
        let backends = Arc::new(backends);
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = client.set_nodelay(true);
                tokio::spawn(carry(client, backends.clone(), next.clone(), watch.clone()));
            }
        });
        Ok(Self { addr, mode, task })
    }

    /// Switches the mode; every connection open under the old one is cut.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects to the next replica that answers.
async fn connect(backends: &[String], next: &AtomicUsize) -> Option<TcpStream> {
    for _ in 0..backends.len() {
        let i = next.fetch_add(1, Ordering::Relaxed) % backends.len();
        let attempt =
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(&backends[i])).await;
        if let Ok(Ok(stream)) = attempt {
            let _ = stream.set_nodelay(true);
            return Some(stream);
        }
    }
    None
}

/// One connection, in the mode in force when it came, until it ends or the
/// mode changes.
async fn carry(
    mut client: TcpStream,
    backends: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
    mut watch: watch::Receiver<Mode>,
) {
    let mode = *watch.borrow_and_update();
    match mode {
        Mode::Refuse => {}
        Mode::Stall => {
            let _ = watch.changed().await;
        }
        Mode::Open => {
            let Some(mut backend) = connect(&backends, &next).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut backend) => {}
                _ = watch.changed() => {}
            }
        }
        Mode::Drop => {
            let Some(backend) = connect(&backends, &next).await else {
                return;
            };
            let (mut from_client, _to_client) = client.split();
            let (mut from_backend, mut to_backend) = backend.into_split();
            let forward = tokio::io::copy(&mut from_client, &mut to_backend);
            let swallow = async {
                let mut sink = vec![0u8; 16 * 1024];
                while let Ok(n) = from_backend.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            tokio::select! {
                _ = forward => {}
                () = swallow => {}
                _ = watch.changed() => {}
            }
            let _ = to_backend.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(addr: &str) -> Option<Vec<u8>> {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        match tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf.to_vec()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn the_proxy_carries_skips_a_dead_replica_and_cuts_on_demand() {
        let live = echo_server().await;
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").to_string()
        };
        let proxy = Proxy::start(vec![dead, live]).await.expect("proxy");
        for _ in 0..3 {
            assert_eq!(round_trip(&proxy.addr).await.as_deref(), Some(&b"ping"[..]));
        }
        for mode in [Mode::Refuse, Mode::Drop, Mode::Stall] {
            proxy.set(mode);
            assert_eq!(round_trip(&proxy.addr).await, None, "{mode:?}");
        }
        proxy.set(Mode::Open);
        assert_eq!(round_trip(&proxy.addr).await.as_deref(), Some(&b"ping"[..]));
    }
}
