//! What a certificate says (the member it names, its expiry), the error every loader
//! reports, and the small rules the rest of `tls` builds on: the crypto provider, private
//! files, the clock. Nothing here imports the other files of `tls`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;

/// The scheme and prefix of the URI SAN that names a member: `standin:node:<id>`.
pub const NODE_URI_PREFIX: &str = "standin:node:";

/// The URI subject alternative name of member `id`.
pub fn node_uri(id: &str) -> String {
    format!("{NODE_URI_PREFIX}{id}")
}

/// Why TLS material was refused. Every variant names the config key of the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("`{key}`: cannot read {path}: {reason}")]
    Read {
        key: String,
        path: PathBuf,
        reason: String,
    },
    #[error("`{key}`: {path}: {reason}")]
    Invalid {
        key: String,
        path: PathBuf,
        reason: String,
    },
    #[error("{0}")]
    Other(String),
}

impl TlsError {
    /// The config key the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            TlsError::Read { key, .. } | TlsError::Invalid { key, .. } => Some(key),
            TlsError::Other(_) => None,
        }
    }

    /// The message without the key (for errors that name the key themselves).
    pub fn detail(&self) -> String {
        match self {
            TlsError::Read { path, reason, .. } => format!("cannot read {}: {reason}", path.display()),
            TlsError::Invalid { path, reason, .. } => format!("{}: {reason}", path.display()),
            TlsError::Other(m) => m.clone(),
        }
    }
}

/// The crypto provider every config uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Refuses a secret file that users other than its owner can read (as ssh does with keys).
pub fn check_private(key: &str, path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| TlsError::Read {
        key: key.to_string(),
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TlsError::Invalid {
            key: key.to_string(),
            path: path.to_path_buf(),
            reason: format!(
                "permissions {mode:04o} let other users read it; run `chmod 600 {}`",
                path.display()
            ),
        });
    }
    Ok(())
}

/// What a certificate says about itself: the member id it names and when it expires.
#[derive(Debug, Clone, PartialEq)]
pub struct CertInfo {
    pub node_id: Option<String>,
    pub not_after: i64,
}

/// Reads the node id (URI SAN `standin:node:<id>`) and expiry of a DER certificate. Only
/// called on certificates whose chain has been checked, or on our own files.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("cannot parse certificate: {e}"))?;
    let mut ids = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                if let Some(id) = uri.strip_prefix(NODE_URI_PREFIX) {
                    ids.push(id.to_string());
                }
            }
        }
    }
    // A certificate that names two members names none: it could act as either.
    let node_id = match ids.len() {
        1 => ids.pop(),
        _ => None,
    };
    Ok(CertInfo {
        node_id,
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// The member id an authenticated peer's certificate names.
pub fn peer_node_id(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let leaf = certs?.first()?;
    cert_info(leaf.as_ref()).ok()?.node_id
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
