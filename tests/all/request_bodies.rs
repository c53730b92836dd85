//! Request bodies from clients: read ahead of admission, so slow ones cost
//! a connection and never a slot; cut at the pace; held in memory up to a
//! budget and in a file past it; streamed past the read-ahead size.

use crate::harness::*;
use bytes::Bytes;
use http_body_util::Full;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECOND: Duration = Duration::from_secs(1);

fn echo_app(server: &str) -> String {
    format!(
        r#"
[server]
key_value = "memory"
request_body_timeout_secs = 1
request_body_min_rate = 1024
{server}

[[route]]
path = "/echo"
component = "echo"

[component.echo]
source = "{{components}}/echo.wasm"
"#
    )
}

async fn post(client: &HttpClient, url: &str, body: Vec<u8>) -> Reply {
    send(client, http::Request::post(url).body(Full::new(Bytes::from(body))).unwrap()).await
}

/// A client that declares a `length`-byte body from `from` and then sends
/// ten bytes a second; it returns what the server answered and when.
async fn trickler(server: std::net::SocketAddr, from: IpAddr, length: usize) -> (String, Duration) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    let mut stream = socket.connect(server).await.unwrap();
    let started = Instant::now();
    let head = format!("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: {length}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        loop {
            if writer.write_all(b"0123456789").await.is_err() {
                return;
            }
            tokio::time::sleep(SECOND).await;
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(30 * SECOND, reader.read_to_end(&mut answer)).await;
    trickle.abort();
    (String::from_utf8_lossy(&answer).into_owned(), started.elapsed())
}

#[tokio::test]
async fn slow_bodies_from_many_addresses_hold_no_slot_and_are_cut_at_the_pace() {
    // 16 addresses, 8 connections each, far under the per-client caps, each
    // declaring a 100 KB body and sending 10 bytes a second.
    let (server, _dir) = TestServer::start(&echo_app("max_concurrent_requests = 16")).await;
    let attackers: Vec<_> = (2..18u8)
        .flat_map(|host| (0..8).map(move |_| IpAddr::from([127, 0, 0, host])))
        .map(|from| tokio::spawn(trickler(server.addr, from, 100_000)))
        .collect();
    let metrics = &server.app.telemetry.metrics;
    eventually("all 128 bodies being read", 10 * SECOND, || metrics.bodies_reading() == 128).await;
    assert_eq!(in_flight(&server), 0, "a body being read holds no admission slot");
    assert_eq!(live(&server), 0, "...and no instance");
    // A normal client is served, slot after slot, while they trickle.
    let client = http1_client();
    for i in 0..20 {
        let reply = post(&client, &server.url("/echo"), format!("body {i}").into_bytes()).await;
        assert_eq!((reply.status, reply.body), (200, format!("body {i}")));
    }
    // Each attacker falls behind the pace (1 s, then 1,024 bytes a second)
    // and gets 408, not before its allowance.
    for attacker in attackers {
        let (answer, took) = attacker.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(took >= SECOND, "cut after {took:?}, before the body timeout");
    }
    assert_eq!(metrics.rejections("body_timeout"), 128);
    assert_eq!(metrics.rejections("overloaded"), 0, "nobody met a 503");
    assert_eq!(metrics.bodies_reading(), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_client_keeping_the_pace_is_not_cut_however_long_it_takes() {
    let (server, _dir) = TestServer::start(&echo_app("")).await;
    // 3 × 1,000 bytes, 0.8 s apart: 1.6 s in all, past the 1 s allowance
    // but never behind 1 s + 1 s per 1,024 bytes.
    let chunks = futures::stream::unfold(0, |sent| async move {
        (sent < 3).then_some(())?;
        if sent > 0 {
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        Some((
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(vec![b'a'; 1000]))),
            sent + 1,
        ))
    });
    let body = http_body_util::StreamBody::new(Box::pin(chunks));
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let started = Instant::now();
    let response =
        client.request(http::Request::post(server.url("/echo")).body(body).unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    let echoed = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
    assert_eq!(echoed.len(), 3000);
    assert!(started.elapsed() >= Duration::from_millis(1600));
    assert_eq!(server.app.telemetry.metrics.rejections("body_timeout"), 0);
    server.stop().await;
}

#[tokio::test]
async fn bodies_past_the_memory_budget_go_through_a_file_intact() {
    let manifest = echo_app("max_request_body_memory_bytes = 1000");
    let (server, _dir) = TestServer::start(&manifest).await;
    let client = http1_client();
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let reply = send(
        &client,
        http::Request::post(server.url("/echo")).body(Full::new(Bytes::from(body.clone()))).unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.as_bytes(), String::from_utf8_lossy(&body).as_bytes());
    assert!(server.app.telemetry.metrics.body_spills() >= 1, "the body went through a file");
    assert_eq!(server.app.admission.body_buffers.in_memory(), 0, "the memory budget is given back");
    server.stop().await;
}

#[tokio::test]
async fn a_body_past_the_read_ahead_streams_under_the_same_pace() {
    // Bodies over 1,000 bytes stream: the request is admitted at once and
    // its guest reads while the client sends; a trickle is still cut.
    let manifest = echo_app("request_body_buffer_bytes = 1000\nmax_concurrent_requests = 4");
    let (server, _dir) = TestServer::start(&manifest).await;
    let attacker = tokio::spawn(trickler(server.addr, "127.0.0.2".parse().unwrap(), 5000));
    eventually("the trickle holds a slot", 10 * SECOND, || in_flight(&server) == 1).await;
    assert_eq!(server.app.telemetry.metrics.bodies_reading(), 0, "not read ahead");
    let (answer, took) = attacker.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(took >= SECOND);
    assert_eq!(server.app.telemetry.metrics.rejections("body_timeout"), 1);
    eventually("its slot is free", 5 * SECOND, || in_flight(&server) == 0).await;
    // A large body sent at speed streams through whole.
    let body = vec![b'z'; 50_000];
    let reply = post(&http1_client(), &server.url("/echo"), body).await;
    assert_eq!((reply.status, reply.body.len()), (200, 50_000));
    server.stop().await;
}
