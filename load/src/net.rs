//! Sockets: each connection bound to a source address spread over 127.0.0.x before it
//! connects (one source address has only about 28k ephemeral ports towards one server
//! port), and the process's file-descriptor limit raised to its hard limit.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use thiserror::Error;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::WebSocketStream;

/// Why a connection did not become a WebSocket; the label is the key in "errors by code".
#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("tcp connect failed: {0}")]
    Tcp(std::io::Error),
    #[error("the upgrade was refused with HTTP {0}")]
    Http(u16),
    #[error("websocket handshake failed: {0}")]
    Handshake(String),
    #[error("bad request: {0}")]
    Request(String),
}

impl ConnectError {
    /// A short code for the error table.
    pub fn code(&self) -> String {
        match self {
            ConnectError::Tcp(e) => match e.raw_os_error() {
                Some(n) => format!("tcp_errno_{n}"),
                None => "tcp".to_string(),
            },
            ConnectError::Http(status) => format!("http_{status}"),
            ConnectError::Handshake(_) => "handshake".to_string(),
            ConnectError::Request(_) => "request".to_string(),
        }
    }
}

/// Where users connect from and to.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// `ws://host:port/ws`
    pub ws_url: String,
    /// How many 127.0.0.x source addresses to spread over (0: the kernel picks).
    pub source_ips: u8,
}

impl Target {
    /// The source address of connection `i`, when spreading applies.
    fn source(&self, i: usize) -> Option<SocketAddr> {
        let loopback = matches!(self.addr.ip(), IpAddr::V4(v4) if v4.is_loopback());
        if !loopback || self.source_ips == 0 {
            return None;
        }
        let host = 1 + (i % usize::from(self.source_ips)) as u8;
        Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)),
            0,
        ))
    }
}

pub type Socket = WebSocketStream<TcpStream>;

/// Opens connection `i` with `token` in the Authorization header.
pub async fn connect(target: &Target, i: usize, token: &str) -> Result<Socket, ConnectError> {
    let socket = TcpSocket::new_v4().map_err(ConnectError::Tcp)?;
    // A source port of an earlier run may still be in TIME_WAIT.
    socket.set_reuseaddr(true).map_err(ConnectError::Tcp)?;
    if let Some(source) = target.source(i) {
        socket.bind(source).map_err(ConnectError::Tcp)?;
    }
    let stream = socket
        .connect(target.addr)
        .await
        .map_err(ConnectError::Tcp)?;
    // Small frames both ways: without NODELAY an answer can wait for a delayed ACK.
    stream.set_nodelay(true).map_err(ConnectError::Tcp)?;
    let mut request = target
        .ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError::Request(e.to_string()))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|e| ConnectError::Request(e.to_string()))?;
    request.headers_mut().insert("authorization", bearer);
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(ConnectError::Http(response.status().as_u16()))
        }
        Err(e) => Err(ConnectError::Handshake(e.to_string())),
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the limit in force and a
/// warning when it is below what `sockets` connections need.
pub fn raise_fd_limit(sockets: usize) -> (u64, Option<String>) {
    let wanted = sockets as u64 + 64;
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            let current = rlimit::Resource::NOFILE
                .get()
                .map(|(soft, _)| soft)
                .unwrap_or(0);
            return (
                current,
                Some(format!(
                    "could not raise RLIMIT_NOFILE ({e}); it stays at {current}"
                )),
            );
        }
    };
    let warning = (limit < wanted).then(|| {
        format!(
            "RLIMIT_NOFILE is {limit} (the hard limit), below the {wanted} descriptors {sockets} \
             sockets need: connections beyond it will fail (raise the hard limit, e.g. ulimit -Hn)"
        )
    });
    (limit, warning)
}
