//! Inbound TLS with a test certificate: HTTP/1.1 and HTTP/2 (chosen by
//! ALPN) on the same port.

use crate::harness::TestServer;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use std::sync::Arc;

async fn tls_get(
    server: &TestServer,
    roots: &rustls::RootCertStore,
    alpn: &[u8],
) -> (http::Version, u16, String) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn), "ALPN agreed");
    let request =
        http::Request::get("/hello").header("host", "localhost").body(Empty::<Bytes>::new()).unwrap();
    let response = if alpn == b"h2" {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
        tokio::spawn(connection);
        let mut request = request;
        *request.uri_mut() = format!("https://localhost:{}/hello", server.addr.port()).parse().unwrap();
        sender.send_request(request).await.unwrap()
    } else {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(connection);
        sender.send_request(request).await.unwrap()
    };
    let version = response.version();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (version, status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn https_serves_http1_and_http2_through_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
    let manifest = r#"
[server]
key_value = "memory"
tls = { cert = "cert.pem", key = "key.pem" }

[[route]]
path = "/hello"
component = "hello"

[component.hello]
source = "{components}/hello.wasm"
"#;
    let server = TestServer::start_in(dir.path(), manifest).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();

    let (version, status, body) = tls_get(&server, &roots, b"http/1.1").await;
    assert_eq!((version, status, body.as_str()), (http::Version::HTTP_11, 200, "Hello, world!\n"));
    let (version, status, body) = tls_get(&server, &roots, b"h2").await;
    assert_eq!((version, status, body.as_str()), (http::Version::HTTP_2, 200, "Hello, world!\n"));

    // Plain HTTP on the TLS port fails, and the server keeps serving.
    assert!(crate::harness::http1_client().get(server.url("/hello").parse().unwrap()).await.is_err());
    let (_, status, _) = tls_get(&server, &roots, b"h2").await;
    assert_eq!(status, 200);
    server.stop().await;
}
