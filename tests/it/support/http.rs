//! A minimal keep-alive HTTP/1.1 client over hyper.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{client::conn::http1::SendRequest, header::HeaderMap, Request};
use hyper_util::rt::TokioIo;

pub struct HttpClient {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_owned())
    }
}

impl HttpClient {
    pub async fn connect(addr: std::net::SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
        tokio::spawn(conn);
        Self { sender, host: addr.to_string() }
    }

    /// Connects from a chosen local address (127.0.0.x: another client IP on loopback).
    pub async fn connect_from(src: std::net::IpAddr, addr: std::net::SocketAddr) -> Self {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind(std::net::SocketAddr::new(src, 0)).expect("bind");
        let stream = sock.connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
        tokio::spawn(conn);
        Self { sender, host: addr.to_string() }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> HttpResponse {
        self.sender.ready().await.expect("connection ready");
        let resp = self.sender.send_request(req).await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        HttpResponse { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
    }

    pub async fn get(&mut self, path: &str, bearer: Option<&str>) -> HttpResponse {
        let mut b = Request::get(path).header("host", &self.host);
        if let Some(t) = bearer {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        self.send(b.body(Full::default()).unwrap()).await
    }

    /// `DELETE path` (revoking a key).
    pub async fn delete(&mut self, path: &str, bearer: Option<&str>) -> HttpResponse {
        let mut b = Request::delete(path).header("host", &self.host);
        if let Some(t) = bearer {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        self.send(b.body(Full::default()).unwrap()).await
    }

    pub async fn post_json(
        &mut self,
        path: &str,
        bearer: Option<&str>,
        body: &str,
    ) -> HttpResponse {
        let mut b = Request::post(path)
            .header("host", &self.host)
            .header("content-type", "application/json");
        if let Some(t) = bearer {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        self.send(b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()).await
    }

    /// `PATCH path` with a JSON body (SPEC §8 key updates).
    pub async fn patch_json(
        &mut self,
        path: &str,
        bearer: Option<&str>,
        body: &str,
    ) -> HttpResponse {
        self.with_body(hyper::Method::PATCH, path, bearer, body).await
    }

    /// Any method with a JSON body.
    pub async fn with_body(
        &mut self,
        method: hyper::Method,
        path: &str,
        bearer: Option<&str>,
        body: &str,
    ) -> HttpResponse {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .header("content-type", "application/json");
        if let Some(t) = bearer {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        self.send(b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()).await
    }
}
