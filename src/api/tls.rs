//! HTTPS for the REST API (`restapi.certfile`/`keyfile`/`cafile`/`verify_client`) with rustls,
//! and the listener glue that tells handlers the client address and whether the client
//! presented a verified certificate.

use super::access::ClientInfo;
use crate::config::RestApiConfig;
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
pub use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;

/// A TLS handshake that takes longer than this is dropped (a stalled client must not hold
/// a task forever).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{what} {path} contains no usable PEM {kind}")]
    NoPem {
        what: &'static str,
        path: String,
        kind: &'static str,
    },
    #[error(
        "restapi.keyfile {0} is encrypted; encrypted keys (keyfile_password) are not supported, \
         store the key decrypted (openssl pkey -in KEY -out PLAIN) with restrictive permissions"
    )]
    EncryptedKey(String),
    #[error(
        "restapi.verify_client is {0:?}, which needs restapi.cafile to check client certificates"
    )]
    NoCaFile(String),
    #[error("restapi.verify_client must be none, optional or required, not {0:?}")]
    BadVerifyClient(String),
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

fn read(what: &'static str, path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(Path::new(path)).map_err(|source| TlsError::Read {
        what,
        path: path.into(),
        source,
    })
}

/// `None` when `restapi.certfile` is not set (plain HTTP).
pub fn tls_acceptor(api: &RestApiConfig) -> Result<Option<TlsAcceptor>, TlsError> {
    let Some(certfile) = api.certfile.as_deref().filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    let cert_pem = read("restapi.certfile", certfile)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoPem {
            what: "restapi.certfile",
            path: certfile.into(),
            kind: "certificate",
        });
    }
    // Like Python's load_cert_chain: without a keyfile the key is in the certfile.
    let keyfile = api.keyfile.as_deref().unwrap_or(certfile);
    let key_pem = read("restapi.keyfile", keyfile)?;
    if String::from_utf8_lossy(&key_pem).contains("ENCRYPTED") {
        return Err(TlsError::EncryptedKey(keyfile.into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::NoPem {
        what: "restapi.keyfile",
        path: keyfile.into(),
        kind: "private key",
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let verify = api
        .verify_client
        .as_deref()
        .map(str::to_ascii_lowercase)
        .unwrap_or_else(|| "none".into());
    let builder = match verify.as_str() {
        "none" | "" => builder.with_no_client_auth(),
        "optional" | "required" => {
            let cafile = api
                .cafile
                .as_deref()
                .ok_or_else(|| TlsError::NoCaFile(verify.clone()))?;
            let mut roots = RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(&read("restapi.cafile", cafile)?) {
                let ca = ca.map_err(|_| TlsError::NoPem {
                    what: "restapi.cafile",
                    path: cafile.into(),
                    kind: "certificate",
                })?;
                roots.add(ca)?;
            }
            let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if verify == "optional" {
                // Safe endpoints stay open; the access guard demands a certificate for unsafe ones.
                v = v.allow_unauthenticated();
            }
            let verifier = v.build().map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        other => return Err(TlsError::BadVerifyClient(other.into())),
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// Accepts TCP connections and completes TLS handshakes in their own tasks, so one slow
/// client cannot hold up the others.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, ClientInfo)>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(accept_loop(tcp, acceptor, tx));
        Ok(TlsListener { rx, local, task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, ClientInfo)>,
) {
    loop {
        let (stream, addr) = match tcp.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("REST API accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let client_cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .is_some_and(|c| !c.is_empty());
                    let _ = tx.send((tls, ClientInfo { addr, client_cert })).await;
                }
                Ok(Err(e)) => tracing::debug!("TLS handshake with {addr} failed: {e}"),
                Err(_) => tracing::debug!("TLS handshake with {addr} timed out"),
            }
        });
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = ClientInfo;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task only ends when we are dropped; never hand out a fake stream.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(ClientInfo {
            addr: self.local,
            client_cert: false,
        })
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for ClientInfo {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        *stream.remote_addr()
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for ClientInfo {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        ClientInfo {
            addr: *stream.remote_addr(),
            client_cert: false,
        }
    }
}
