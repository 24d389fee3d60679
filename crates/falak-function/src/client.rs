//! The node's side of the runtime host protocol: HTTP/1.1 over hyper to one instance, with a
//! small pool of idle keep-alive connections so warm requests do not reconnect.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{BoxBody, BoxError};

/// The most idle connections kept per instance; more concurrent requests open more, and the
/// extra ones close when they finish.
const MAX_IDLE: usize = 32;

/// Where an instance listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
            Target::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

/// Why a request got no response.
#[derive(Debug)]
pub(crate) enum SendError {
    Connect(io::Error),
    Http(hyper::Error),
}

pub(crate) struct Client {
    target: Target,
    idle: Mutex<Vec<SendRequest<BoxBody>>>,
}

impl Client {
    pub fn new(target: Target) -> Arc<Client> {
        Arc::new(Client { target, idle: Mutex::new(Vec::new()) })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Open a connection (without sending anything), to check that the instance listens.
    pub async fn connect(&self) -> io::Result<()> {
        match &self.target {
            Target::Unix(path) => tokio::net::UnixStream::connect(path).await.map(drop),
            Target::Tcp(addr) => tokio::net::TcpStream::connect(addr).await.map(drop),
        }
    }

    /// Keep an already connected stream as an idle connection.
    pub async fn adopt<T>(&self, io: T) -> Result<(), SendError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let sender = handshake(io).await.map_err(SendError::Http)?;
        self.release(sender);
        Ok(())
    }

    /// Send one request; the response body streams from the instance and the connection
    /// returns to the pool when it ends.
    pub async fn send(self: &Arc<Self>, mut request: Request<BoxBody>) -> Result<Response<BoxBody>, SendError> {
        prepare_request(&mut request);
        let mut sender = self.checkout().await?;
        let response = sender.send_request(request).await.map_err(SendError::Http)?;
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let body = PooledBody { inner: body, sender: Some(sender), pool: Arc::downgrade(self) };
        Ok(Response::from_parts(parts, BoxBody::new(body)))
    }

    /// `GET path` with the whole (small) body read, so the connection goes back to the pool.
    pub async fn get(self: &Arc<Self>, path: &str) -> Result<(http::StatusCode, Bytes), SendError> {
        let request = Request::get(path)
            .body(BoxBody::new(http_body_util::Empty::new().map_err(|never| match never {})))
            .map_err(|e| SendError::Connect(io::Error::other(e)))?;
        let response = self.send(request).await?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(e) => SendError::Http(*e),
                Err(e) => SendError::Connect(io::Error::other(e)),
            })?
            .to_bytes();
        Ok((status, body))
    }

    async fn checkout(&self) -> Result<SendRequest<BoxBody>, SendError> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop();
            let Some(mut sender) = idle else { break };
            // A pooled connection finished its last response, so it is ready at once unless
            // the instance closed it; then it is dropped and the next one tried.
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        match &self.target {
            Target::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path).await.map_err(SendError::Connect)?;
                handshake(stream).await.map_err(SendError::Http)
            }
            Target::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr).await.map_err(SendError::Connect)?;
                let _ = stream.set_nodelay(true);
                handshake(stream).await.map_err(SendError::Http)
            }
        }
    }

    fn release(&self, sender: SendRequest<BoxBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(sender);
        }
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<BoxBody>, hyper::Error>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "connection to a function instance ended");
        }
    });
    Ok(sender)
}

/// Origin-form target, a Host header, and no hop-by-hop headers (hyper frames the body).
fn prepare_request(request: &mut Request<BoxBody>) {
    let target = request.uri().path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    if let Ok(uri) = target.parse() {
        *request.uri_mut() = uri;
    }
    strip_hop_by_hop(request.headers_mut());
    if !request.headers().contains_key(header::HOST) {
        request.headers_mut().insert(header::HOST, http::HeaderValue::from_static("falak"));
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// A response body that gives its connection back to the pool once it has been read to the
/// end. Dropped half-read, the connection is dropped too (its state is unknown).
struct PooledBody {
    inner: Incoming,
    sender: Option<SendRequest<BoxBody>>,
    pool: Weak<Client>,
}

impl PooledBody {
    fn release(&mut self) {
        if let (Some(sender), Some(pool)) = (self.sender.take(), self.pool.upgrade()) {
            pool.release(sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if this.inner.is_end_stream() {
                    this.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.sender = None;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}
