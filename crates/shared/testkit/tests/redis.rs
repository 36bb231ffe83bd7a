//! RedisServer: start, stop, restart on the same port; nothing is persisted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use gpuaas_testkit::RedisServer;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Sends one inline command and returns the first reply line.
async fn command(port: u16, line: &str) -> Option<String> {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(format!("{line}\r\n").as_bytes()).await.ok()?;
        let mut reply = Vec::new();
        let mut byte = [0_u8; 1];
        while !reply.ends_with(b"\r\n") {
            stream.read_exact(&mut byte).await.ok()?;
            reply.push(byte[0]);
        }
        // A bulk string: the header line, then the value line.
        if reply.starts_with(b"$") && reply != b"$-1\r\n" {
            reply.clear();
            while !reply.ends_with(b"\r\n") {
                stream.read_exact(&mut byte).await.ok()?;
                reply.push(byte[0]);
            }
        }
        Some(String::from_utf8_lossy(&reply).trim_end().to_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), attempt).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stop_restart_on_the_same_port() {
    let mut server = RedisServer::start().await;
    let port = server.port();
    assert_eq!(server.url(), format!("redis://127.0.0.1:{port}"));
    assert!(server.is_running());
    assert_eq!(command(port, "PING").await.as_deref(), Some("+PONG"));
    assert_eq!(command(port, "SET k v").await.as_deref(), Some("+OK"));
    assert_eq!(command(port, "GET k").await.as_deref(), Some("v"));

    server.stop().await;
    assert!(!server.is_running());
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err(), "a stopped server's port refuses connections");
    server.stop().await;

    server.restart().await;
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    assert_eq!(command(port, "GET k").await.as_deref(), Some("$-1"), "nothing survives a restart");

    server.kill().await;
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
    server.restart().await;
    assert_eq!(command(port, "PING").await.as_deref(), Some("+PONG"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_get_distinct_ports() {
    let a = RedisServer::start().await;
    let b = RedisServer::start().await;
    assert_ne!(a.port(), b.port());
    assert_eq!(command(b.port(), "PING").await.as_deref(), Some("+PONG"));
}
