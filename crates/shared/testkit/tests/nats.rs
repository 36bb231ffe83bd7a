//! NatsServer: start, stop, restart on the same port, JetStream data survives.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::jetstream;
use gpuaas_testkit::NatsServer;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

/// Connects and reads the first 4 bytes; true when the server greets with INFO.
async fn speaks_nats(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let mut buf = [0_u8; 4];
        stream.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"INFO")
    };
    matches!(tokio::time::timeout(Duration::from_secs(2), attempt).await, Ok(Some(true)))
}

async fn refuses(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stop_restart_on_the_same_port() {
    let mut server = NatsServer::start().await;
    let port = server.port();
    let url = server.url();
    assert_eq!(url, format!("nats://127.0.0.1:{port}"));
    assert!(server.is_running());
    assert!(speaks_nats(port).await, "a started server accepts connections");

    server.stop().await;
    assert!(!server.is_running());
    assert!(refuses(port).await, "a stopped server's port refuses connections");
    // Stopping twice is harmless.
    server.stop().await;

    server.restart().await;
    assert!(server.is_running());
    assert_eq!(server.port(), port, "restart keeps the port");
    assert_eq!(server.url(), url, "restart keeps the url");
    assert!(speaks_nats(port).await, "a restarted server accepts connections");

    server.kill().await;
    assert!(refuses(port).await, "a killed server's port refuses connections");
    server.restart().await;
    assert!(speaks_nats(port).await, "restart after kill works too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_data_survives_a_restart() {
    let mut server = NatsServer::start().await;

    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    js.create_stream(jetstream::stream::Config {
        name: "TESTKIT".to_string(),
        subjects: vec!["testkit.>".to_string()],
        ..Default::default()
    })
    .await
    .unwrap();
    for i in 0..3 {
        js.publish("testkit.event", format!("event {i}").into()).await.unwrap().await.unwrap();
    }
    drop(js);
    drop(client);

    server.stop().await;
    server.restart().await;

    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client);
    let info = js.get_stream("TESTKIT").await.unwrap().get_info().await.unwrap();
    assert_eq!(info.state.messages, 3, "messages survive stop + restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_do_not_share_ports_or_stores() {
    let a = NatsServer::start().await;
    let b = NatsServer::start().await;
    assert_ne!(a.port(), b.port());
    assert_ne!(a.store_dir(), b.store_dir());
    let port = a.port();
    drop(a);
    assert!(refuses(port).await, "dropping a server kills it");
    assert!(speaks_nats(b.port()).await);
}
