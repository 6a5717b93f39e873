//! OAUTHBEARER with OIDC client credentials: librdkafka (built with libcurl) fetches the token
//! itself. No broker here speaks OAUTHBEARER, but the token request is librdkafka's first move,
//! so a local token endpoint shows that the build has OIDC and that the service's settings reach
//! it; the endpoint refusing the credentials must stop the service at start-up with the reason.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_client_credentials_are_requested_and_a_refusal_stops_the_service() {
    let endpoint = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("token endpoint");
    let token_url = format!(
        "http://{}/oauth2/token",
        endpoint.local_addr().expect("bound address")
    );
    let broker = TestBroker::mock();
    let topics = broker.topics(1).await;
    let mut config = broker.pipeline_config(&topics, &unique("oidc"));
    for (k, v) in [
        ("security.protocol", "SASL_PLAINTEXT"),
        ("sasl.mechanism", "OAUTHBEARER"),
        ("sasl.oauthbearer.method", "oidc"),
        ("sasl.oauthbearer.client.id", "streamscore"),
        ("sasl.oauthbearer.client.secret", "s3cret"),
        ("sasl.oauthbearer.token.endpoint.url", token_url.as_str()),
    ] {
        config.properties.push((k.to_owned(), v.to_owned()));
    }
    let service = broker
        .start_service_with(config, &repo_path(IRIS_MODEL), None)
        .await;

    // Both of the service's clients (consumer and producer) ask for a token: every request
    // is answered, with a refusal, and handed to the test.
    let (requests, mut received) = tokio::sync::mpsc::unbounded_channel();
    let token_endpoint = tokio::spawn(async move {
        while let Ok((mut socket, _)) = endpoint.accept().await {
            let requests = requests.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers and a small form body: read until the body is in or the peer stops.
                while !String::from_utf8_lossy(&request).contains("grant_type") {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await;
                let _ = requests.send(String::from_utf8_lossy(&request).into_owned());
            });
        }
    });
    let request = tokio::time::timeout(Duration::from_secs(20), received.recv())
        .await
        .expect("librdkafka asks the token endpoint within 20 s")
        .expect("a token request");
    assert!(request.starts_with("POST /oauth2/token"), "{request}");
    assert!(
        request.contains("grant_type=client_credentials"),
        "{request}"
    );
    // Client id and secret go in HTTP basic authentication, never in the URL.
    assert!(
        request
            .to_ascii_lowercase()
            .contains("authorization: basic"),
        "{request}"
    );

    let ended = tokio::time::timeout(Duration::from_secs(30), service.wait())
        .await
        .expect("the service stops by itself when the token is refused");
    let err = format!("{:#}", ended.expect_err("a refused token is an error"));
    assert!(err.contains("Authentication"), "the error says why: {err}");
    token_endpoint.abort();
}
