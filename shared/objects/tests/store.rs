//! The store against each backend: a local directory always, and a real
//! S3-compatible server (moto's `moto_server`, from PyPI's `moto[server]`)
//! when one is installed (`.venv/bin` or `PATH`); without it the S3 test says
//! so and checks nothing.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use clap::Parser;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use ta_objects::{Store, StoreConfig};
use ta_runtime::ServiceError;

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    store: StoreConfig,
}

fn config(args: &[&str]) -> StoreConfig {
    let mut all = vec!["test"];
    all.extend_from_slice(args);
    Cli::try_parse_from(all).expect("store config").store
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn content(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn read_all(store: &Store, sha256: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stream = Box::pin(store.read(sha256).await.expect("read"));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        assert!(chunk.len() <= ta_objects::MAX_CHUNK);
        out.extend_from_slice(&chunk);
    }
    out
}

async fn upload(store: &Store, bytes: &[u8]) -> Result<bool, ServiceError> {
    let mut upload = store.begin(bytes.len() as u64, &sha(bytes)).await?;
    for chunk in bytes.chunks(ta_objects::MAX_CHUNK) {
        upload.chunk(chunk).await?;
    }
    upload.finish().await
}

/// Every behaviour of the store, whatever the backend.
async fn exercise(store: &Store) {
    store.probe().await.expect("the store answers");
    // A file of several parts (over S3's 5 MiB part) is stored once.
    let big = content(6 * 1024 * 1024 + 123, 7);
    assert!(!store.contains(&sha(&big)).await.unwrap());
    assert!(upload(store, &big).await.unwrap(), "written");
    assert!(store.contains(&sha(&big)).await.unwrap());
    assert!(
        !upload(store, &big).await.unwrap(),
        "the same content is not written again"
    );
    assert_eq!(read_all(store, &sha(&big)).await, big);

    // A wrong SHA-256, a short file and a cut-off stream leave nothing.
    let small = content(10_000, 3);
    let wrong = sha(b"something else");
    let mut bad = store.begin(small.len() as u64, &wrong).await.unwrap();
    bad.chunk(&small).await.unwrap();
    assert!(matches!(
        bad.finish().await,
        Err(ServiceError::InvalidArgument(_))
    ));
    assert!(!store.contains(&wrong).await.unwrap());
    let mut short = store.begin(20_000, &sha(&small)).await.unwrap();
    short.chunk(&small).await.unwrap();
    assert!(short.finish().await.is_err());
    let mut cut = store.begin(small.len() as u64, &sha(&small)).await.unwrap();
    cut.chunk(&small[..5_000]).await.unwrap();
    cut.suspend().await;
    assert!(!store.contains(&sha(&small)).await.unwrap());
    let mut over = store.begin(10, &sha(&small)).await.unwrap();
    assert!(over.chunk(&small).await.is_err());
    over.abort().await;
    assert!(!store.contains(&sha(&small)).await.unwrap());

    // A resumable upload: cut off, it keeps what came, for its uploader only;
    // resumed, earlier than that if asked, it completes and leaves no partial.
    let file = content(9 * 1024 * 1024 + 77, 11);
    let id = sha(&file);
    let size = file.len() as u64;
    let mut first = store
        .begin_resumable("claim-1", &id, "buyer-1", size, 0)
        .await
        .unwrap();
    let cut_at = 8 * 1024 * 1024 + 500_000;
    for chunk in file[..cut_at].chunks(ta_objects::MAX_CHUNK) {
        first.chunk(chunk).await.unwrap();
    }
    first.suspend().await;
    assert_eq!(
        store.progress("claim-1", &id, "buyer-1").await.unwrap(),
        cut_at as u64
    );
    assert_eq!(store.progress("claim-1", &id, "other").await.unwrap(), 0);
    assert!(matches!(
        store
            .begin_resumable("claim-1", &id, "buyer-1", size, cut_at as u64 + 1)
            .await,
        Err(ServiceError::InvalidArgument(_))
    ));
    // Resumed inside the first segment: what follows is dropped and sent again.
    let from = 4 * 1024 * 1024 + 3;
    let mut second = store
        .begin_resumable("claim-1", &id, "buyer-1", size, from as u64)
        .await
        .unwrap();
    assert_eq!(
        store.progress("claim-1", &id, "buyer-1").await.unwrap(),
        from as u64
    );
    second.chunk(&file[from..from + 1000]).await.unwrap();
    second.suspend().await;
    let third = from + 1000;
    let mut last = store
        .begin_resumable("claim-1", &id, "buyer-1", size, third as u64)
        .await
        .unwrap();
    for chunk in file[third..].chunks(ta_objects::MAX_CHUNK) {
        last.chunk(chunk).await.unwrap();
    }
    assert!(last.finish().await.unwrap(), "written");
    assert_eq!(read_all(store, &id).await, file);
    assert_eq!(store.progress("claim-1", &id, "buyer-1").await.unwrap(), 0);

    // A refused resumable upload keeps nothing; a stale one is swept.
    let mut refused = store
        .begin_resumable("claim-2", &id, "buyer-1", 100, 0)
        .await
        .unwrap();
    assert!(refused.chunk(&file[..200]).await.is_err());
    refused.abort().await;
    assert_eq!(store.progress("claim-2", &id, "buyer-1").await.unwrap(), 0);
    let mut stale = store
        .begin_resumable("claim-3", &id, "buyer-1", size, 0)
        .await
        .unwrap();
    stale.chunk(&file[..1000]).await.unwrap();
    stale.suspend().await;
    store.sweep_partials(Duration::from_secs(3600)).await;
    assert_eq!(
        store.progress("claim-3", &id, "buyer-1").await.unwrap(),
        1000
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    store.sweep_partials(Duration::from_millis(10)).await;
    assert_eq!(store.progress("claim-3", &id, "buyer-1").await.unwrap(), 0);
}

#[tokio::test]
async fn a_local_directory_keeps_files_by_their_hash() {
    let dir = std::env::temp_dir().join(format!("ta-objects-{}", std::process::id()));
    let text = dir.display().to_string();
    let store = Store::from_config(&config(&["--evidence-store", &text])).unwrap();
    exercise(&store).await;
    let _ = std::fs::remove_dir_all(dir);
}

fn moto_server() -> Option<PathBuf> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/moto_server");
    if venv.is_file() {
        return Some(venv);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("moto_server"))
            .find(|p| p.is_file())
    })
}

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A plain HTTP request to the server (creating a bucket needs no signature
/// on moto); the status code.
fn http(port: u16, method: &str, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    let text = String::from_utf8_lossy(&head);
    Ok(text[9..12].parse().unwrap_or(0))
}

#[tokio::test]
async fn an_s3_bucket_keeps_files_by_their_hash() {
    let Some(binary) = moto_server() else {
        eprintln!(
            "SKIPPED: no moto_server (pip install 'moto[server]'): the S3 backend is not exercised"
        );
        return;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _moto = Moto(
        Command::new(binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts"),
    );
    let mut up = false;
    for _ in 0..200 {
        if http(port, "GET", "/").is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "moto_server answers");
    assert_eq!(http(port, "PUT", "/evidence-test").unwrap(), 200);
    let endpoint = format!("http://127.0.0.1:{port}");
    let s3 = |location: &str| {
        config(&[
            "--evidence-store",
            location,
            "--evidence-s3-endpoint",
            &endpoint,
            "--evidence-s3-allow-http",
            "true",
            "--aws-access-key-id",
            "test",
            "--aws-secret-access-key",
            "test",
            "--evidence-s3-request-timeout",
            "5s",
        ])
    };
    // A missing bucket stops the process at start-up, naming the variable.
    let missing = Store::from_config(&s3("s3://no-such-bucket")).unwrap();
    let err = missing.probe().await.unwrap_err();
    assert!(err.contains("EVIDENCE_STORE"), "{err}");

    let store = Store::from_config(&s3("s3://evidence-test/dispute")).unwrap();
    assert_eq!(store.describe(), "s3://evidence-test/dispute");
    exercise(&store).await;
    // The files are under the prefix, by hash, and nothing else is left.
    let listing = {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            stream,
            "GET /evidence-test?list-type=2 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    };
    let keys: Vec<&str> = listing
        .split("<Key>")
        .skip(1)
        .filter_map(|k| k.split("</Key>").next())
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys.iter().all(|k| k.starts_with("dispute/sha256/")),
        "{keys:?}"
    );
}
