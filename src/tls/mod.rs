//! TLS for every listener and client of a node, on rustls with the `ring` provider (TLS 1.3
//! only).
//!
//! Nodes authenticate each other with certificates from one cluster CA. A node's certificate
//! names its member id as a URI subject alternative name, `standin:node:<id>` ([`node_uri`]);
//! the id a peer may act as is the one its certificate names, never a field of a message.
//! Certificates carry both the server and the client purpose, since every node is both.
//!
//! Files are reloaded when they change ([`Tls::reload_if_changed`], polled, and on SIGHUP):
//! connections already open keep the certificate they started with, new ones use the new one.
//! A file that does not load leaves the old material in place and is reported.
//!
//! This module sits low in the layers: it imports nothing of the crate.

mod certs;
mod identity;
mod verify;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub use certs::{init_ca, issue, issue_between, issue_files, CaFiles, IssuedFiles};
pub use identity::{
    cert_info, check_private, node_uri, peer_node_id, provider, unix_now, CertInfo, TlsError, NODE_URI_PREFIX,
};
pub use verify::ServerVerifier;

/// Largest PEM file read (a CA bundle of a few hundred certificates fits); a larger file is
/// refused before it is read whole.
pub const MAX_PEM_FILE: u64 = 1024 * 1024;

/// Where a node's TLS files are, and the config keys that named them (for errors).
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    /// The CA that signs the certificates this side accepts (`None`: no client certificates
    /// are checked, e.g. an HTTPS listener with its own certificate).
    pub ca: Option<PathBuf>,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Config keys of `ca`, `cert` and `key`, named in errors.
    pub keys: [&'static str; 3],
}

/// Loaded, checked material: the trusted roots, this side's chain and key.
pub struct Material {
    pub roots: Option<Arc<RootCertStore>>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    /// The member id this certificate names, if it names one.
    pub node_id: Option<String>,
    /// When the certificate expires (Unix seconds).
    pub not_after: i64,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("node_id", &self.node_id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Reads a PEM file of at most [`MAX_PEM_FILE`] bytes.
fn read_pem(key: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_err = |e: io::Error| TlsError::Read {
        key: key.to_string(),
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.len() > MAX_PEM_FILE {
        return Err(TlsError::Invalid {
            key: key.to_string(),
            path: path.to_path_buf(),
            reason: format!("{} bytes; at most {MAX_PEM_FILE} are read", meta.len()),
        });
    }
    std::fs::read(path).map_err(read_err)
}

fn load_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            key: key.to_string(),
            path: path.to_path_buf(),
            reason: format!("not a PEM certificate file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            key: key.to_string(),
            path: path.to_path_buf(),
            reason: "holds no certificate".into(),
        });
    }
    Ok(certs)
}

impl Material {
    /// Loads and checks `files`: the key must be private to its owner, the certificate must
    /// chain to the CA (when one is given), hold the key's public half and not be expired.
    pub fn load(files: &TlsFiles) -> Result<Material, TlsError> {
        let [ca_key, cert_key, key_key] = files.keys;
        let roots = match &files.ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in load_certs(ca_key, ca)? {
                    roots.add(c).map_err(|e| TlsError::Invalid {
                        key: ca_key.to_string(),
                        path: ca.clone(),
                        reason: format!("not a usable CA certificate: {e}"),
                    })?;
                }
                Some(Arc::new(roots))
            }
            None => None,
        };
        let chain = load_certs(cert_key, &files.cert)?;
        check_private(key_key, &files.key)?;
        let pem = read_pem(key_key, &files.key)?;
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Invalid {
            key: key_key.to_string(),
            path: files.key.clone(),
            reason: format!("not a PEM private key: {e}"),
        })?;
        let invalid_cert = |reason: String| TlsError::Invalid {
            key: cert_key.to_string(),
            path: files.cert.clone(),
            reason,
        };
        let info = cert_info(chain[0].as_ref()).map_err(invalid_cert)?;
        if info.not_after < unix_now() {
            return Err(invalid_cert(format!(
                "the certificate expired at {}",
                humantime::format_rfc3339_seconds(
                    UNIX_EPOCH + std::time::Duration::from_secs(info.not_after.max(0) as u64)
                )
            )));
        }
        // The key must belong to the certificate, and the certificate to the CA.
        let signing = provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| TlsError::Invalid {
                key: key_key.to_string(),
                path: files.key.clone(),
                reason: format!("unsupported private key: {e}"),
            })?;
        let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing);
        certified.keys_match().map_err(|e| TlsError::Invalid {
            key: key_key.to_string(),
            path: files.key.clone(),
            reason: format!("does not match the certificate in {}: {e}", files.cert.display()),
        })?;
        if let Some(roots) = &roots {
            verify::chains_to(roots, &chain).map_err(|e| {
                invalid_cert(format!(
                    "not signed by the CA in {}: {e}",
                    files.ca.as_deref().unwrap_or(Path::new("?")).display()
                ))
            })?;
        }
        Ok(Material {
            roots,
            chain,
            key: Arc::new(key),
            node_id: info.node_id,
            not_after: info.not_after,
        })
    }
}

/// The configs built from one [`Material`].
struct Loaded {
    material: Material,
    /// Server side that asks for and checks a client certificate (peer transport).
    mutual: Option<Arc<ServerConfig>>,
    /// Server side without client certificates (HTTPS admin API, store).
    plain: Arc<ServerConfig>,
    /// Client side per expected peer id (each checks that the server names that id).
    clients: Mutex<HashMap<String, Arc<ClientConfig>>>,
}

fn server_builder() -> rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier> {
    ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
}

impl Loaded {
    fn build(material: Material) -> Result<Loaded, TlsError> {
        let signing_err =
            |e: rustls::Error| TlsError::Other(format!("cannot use the certificate and key: {e}"));
        let mutual = match &material.roots {
            Some(roots) => {
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                        .build()
                        .map_err(|e| TlsError::Other(format!("cannot build the client verifier: {e}")))?;
                let mut cfg = server_builder()
                    .with_client_cert_verifier(verifier)
                    .with_single_cert(material.chain.clone(), material.key.clone_key())
                    .map_err(signing_err)?;
                // No session resumption between nodes: a resumed session skips the certificate
                // checks, so a certificate that expired (or a peer reissued from a new CA)
                // would still get in. Connections are long-lived; a full handshake is rare.
                cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
                cfg.send_tls13_tickets = 0;
                Some(Arc::new(cfg))
            }
            None => None,
        };
        let mut plain = server_builder()
            .with_no_client_auth()
            .with_single_cert(material.chain.clone(), material.key.clone_key())
            .map_err(signing_err)?;
        plain.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Loaded {
            material,
            mutual,
            plain: Arc::new(plain),
            clients: Mutex::default(),
        })
    }
}

/// Identity of the files as last loaded: a change of any of them triggers a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Vec<Option<(SystemTime, u64, u64)>>);

impl Stamp {
    fn of(files: &TlsFiles) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        let paths = files.ca.iter().chain([&files.cert, &files.key]);
        Stamp(
            paths
                .map(|p| {
                    std::fs::metadata(p)
                        .ok()
                        .map(|m| (m.modified().unwrap_or(UNIX_EPOCH), m.len(), m.ino()))
                })
                .collect(),
        )
    }
}

/// One node's TLS material, reloaded when its files change. Cheap to share (`Arc`).
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<Loaded>>,
    stamp: Mutex<Stamp>,
    /// Counts successful reloads: connections made before the last one may be replaced.
    generation: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Tls {
    /// Loads `files`; when `expect_id` is given, the certificate must name that member.
    pub fn load(files: TlsFiles, expect_id: Option<&str>) -> Result<Tls, TlsError> {
        let stamp = Stamp::of(&files);
        let loaded = Self::build(&files, expect_id)?;
        Ok(Tls {
            files,
            current: RwLock::new(Arc::new(loaded)),
            stamp: Mutex::new(stamp),
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn build(files: &TlsFiles, expect_id: Option<&str>) -> Result<Loaded, TlsError> {
        let material = Material::load(files)?;
        if let Some(id) = expect_id {
            if material.node_id.as_deref() != Some(id) {
                return Err(TlsError::Invalid {
                    key: files.keys[1].to_string(),
                    path: files.cert.clone(),
                    reason: match &material.node_id {
                        Some(other) => format!(
                            "the certificate names member {other:?}, but this node is {id:?} (issue one with `standin certs issue {id}`)"
                        ),
                        None => format!(
                            "the certificate names no member (a URI SAN `{}`); issue one with `standin certs issue {id}`",
                            node_uri(id)
                        ),
                    },
                });
            }
        }
        Loaded::build(material)
    }

    fn now(&self) -> Arc<Loaded> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reloads the files if any of them changed since the last load. `Ok(true)`: new material
    /// is in use; an error leaves the old material in place.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let stamp = Stamp::of(&self.files);
        if *lock(&self.stamp) == stamp {
            return Ok(false);
        }
        self.reload_with(stamp)
    }

    /// Reloads the files whether or not they look changed (SIGHUP).
    pub fn reload(&self) -> Result<bool, TlsError> {
        self.reload_with(Stamp::of(&self.files))
    }

    fn reload_with(&self, stamp: Stamp) -> Result<bool, TlsError> {
        let expect = self.now().material.node_id.clone();
        // Remember the stamp even when loading fails: the same broken files are reported
        // once, not on every poll.
        *lock(&self.stamp) = stamp;
        let loaded = Self::build(&self.files, expect.as_deref())?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        self.generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(true)
    }

    /// How many times new material was loaded since start.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// When the certificate in use expires (Unix seconds).
    pub fn not_after(&self) -> i64 {
        self.now().material.not_after
    }

    /// The member id the certificate in use names.
    pub fn node_id(&self) -> Option<String> {
        self.now().material.node_id.clone()
    }

    /// The files this was loaded from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Accepts peer connections: TLS 1.3, a client certificate from the CA required.
    pub fn peer_acceptor(&self) -> Option<TlsAcceptor> {
        self.now().mutual.clone().map(TlsAcceptor::from)
    }

    /// Accepts clients without certificates (HTTPS, store).
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.now().plain.clone())
    }

    /// The server side of [`Tls::peer_acceptor`], for a caller that sets its own ALPN names
    /// per connection (the peer protocol's negotiation).
    pub fn peer_server_config(&self) -> Option<Arc<ServerConfig>> {
        self.now().mutual.clone()
    }

    /// Connects to member `peer`: its certificate must chain to the CA and name `peer`; ours
    /// is presented as the client certificate.
    pub fn peer_connector(&self, peer: &str) -> Result<TlsConnector, TlsError> {
        self.peer_client_config(peer).map(TlsConnector::from)
    }

    /// The client side of [`Tls::peer_connector`] (to set ALPN names on a copy).
    pub fn peer_client_config(&self, peer: &str) -> Result<Arc<ClientConfig>, TlsError> {
        let loaded = self.now();
        if let Some(c) = lock(&loaded.clients).get(peer) {
            return Ok(c.clone());
        }
        let roots = loaded
            .material
            .roots
            .clone()
            .ok_or_else(|| TlsError::Other("no CA configured for peer connections".into()))?;
        let mut cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier::member(roots, peer)))
            .with_client_auth_cert(loaded.material.chain.clone(), loaded.material.key.clone_key())
            .map_err(|e| TlsError::Other(format!("cannot use the certificate and key: {e}")))?;
        // Every connection to a peer checks its certificate in full (see `Loaded::build`).
        cfg.resumption = rustls::client::Resumption::disabled();
        let cfg = Arc::new(cfg);
        lock(&loaded.clients).insert(peer.to_string(), cfg.clone());
        Ok(cfg)
    }
}

/// The server name sent to peers (SNI). Peers are checked by the id their certificate names,
/// not by this name.
pub fn peer_server_name() -> ServerName<'static> {
    ServerName::try_from("standin").expect("a valid DNS name")
}

/// A client config for HTTPS to an admin API whose certificate is signed by the CA in
/// `ca_pem`: the certificate must chain to that CA and either match the host name or name a
/// member (node certificates name members, not hosts).
pub fn https_client_config(ca_path: &Path) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs("--ca", ca_path)? {
        roots.add(c).map_err(|e| TlsError::Invalid {
            key: "--ca".into(),
            path: ca_path.to_path_buf(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerVerifier::host_or_member(Arc::new(roots))))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The server name to send for `host` (an IP address or a DNS name).
pub fn server_name_for(host: &str) -> ServerName<'static> {
    ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_string())
        .unwrap_or_else(|_| peer_server_name())
}

/// A time to expiry in words: "in 29 days", "in 5 hours", "expired 3 days ago".
pub fn in_words(seconds: i64) -> String {
    let days = seconds.abs() / 86_400;
    let amount = if days > 0 {
        format!("{days} days")
    } else {
        format!("{} hours", seconds.abs() / 3600)
    };
    if seconds >= 0 {
        format!("in {amount}")
    } else {
        format!("expired {amount} ago")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const DAY: Duration = Duration::from_secs(86_400);

    /// A CA in `dir/ca` and files for `ids` issued by it into `dir/ca`.
    fn cluster(dir: &Path, ids: &[&str]) -> PathBuf {
        let ca = dir.join("ca");
        init_ca(&ca, "test CA", 10 * DAY).expect("CA");
        for id in ids {
            issue_files(&ca, &ca, id, &["127.0.0.1".into()], 30 * DAY).expect("issue");
        }
        ca
    }

    fn files(ca: &Path, id: &str) -> TlsFiles {
        TlsFiles {
            ca: Some(ca.join("ca.pem")),
            cert: ca.join(format!("{id}.pem")),
            key: ca.join(format!("{id}.key")),
            keys: ["tls.ca", "tls.cert", "tls.key"],
        }
    }

    #[test]
    fn an_issued_certificate_names_its_member_and_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = cluster(dir.path(), &["a"]);
        let tls = Tls::load(files(&ca, "a"), Some("a")).expect("load");
        assert_eq!(tls.node_id().as_deref(), Some("a"));
        let left = tls.not_after() - unix_now();
        assert!((29 * 86_400..=30 * 86_400).contains(&left), "{left}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(ca.join("a.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn wrong_files_are_refused_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = cluster(dir.path(), &["a", "b"]);
        // Another member's certificate.
        let e = Tls::load(files(&ca, "b"), Some("a")).expect_err("b's certificate for a");
        assert_eq!(e.key(), Some("tls.cert"));
        assert!(e.to_string().contains("names member \"b\""), "{e}");
        // A key other users can read.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(ca.join("a.key"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = Tls::load(files(&ca, "a"), Some("a")).expect_err("readable key");
        assert_eq!(e.key(), Some("tls.key"));
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(ca.join("a.key"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
        // The key of another certificate.
        let mut mixed = files(&ca, "a");
        mixed.key = ca.join("b.key");
        let e = Tls::load(mixed, Some("a")).expect_err("mismatched key");
        assert_eq!(e.key(), Some("tls.key"));
        // A certificate from another CA.
        let other = cluster(&dir.path().join("other"), &["a"]);
        let mut foreign = files(&other, "a");
        foreign.ca = Some(ca.join("ca.pem"));
        let e = Tls::load(foreign, Some("a")).expect_err("foreign CA");
        assert_eq!(e.key(), Some("tls.cert"));
        assert!(e.to_string().contains("not signed by the CA"), "{e}");
        // An expired certificate.
        let (cert, key) = issue_between(
            &std::fs::read_to_string(ca.join("ca.pem")).expect("ca"),
            &std::fs::read_to_string(ca.join("ca.key")).expect("ca key"),
            "a",
            &[],
            Some(time::OffsetDateTime::now_utc() - time::Duration::days(10)),
            DAY,
        )
        .expect("issue");
        let old = dir.path().join("old");
        std::fs::create_dir(&old).expect("dir");
        std::fs::write(old.join("a.pem"), cert).expect("write");
        std::fs::write(old.join("a.key"), key).expect("write");
        std::fs::set_permissions(old.join("a.key"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let mut expired = files(&old, "a");
        expired.ca = Some(ca.join("ca.pem"));
        let e = Tls::load(expired, Some("a")).expect_err("expired");
        assert!(e.to_string().contains("expired"), "{e}");
        // Not PEM at all.
        std::fs::write(old.join("junk.pem"), "hello").expect("write");
        let mut junk = files(&ca, "a");
        junk.cert = old.join("junk.pem");
        assert_eq!(
            Tls::load(junk, Some("a")).expect_err("junk").key(),
            Some("tls.cert")
        );
    }

    #[test]
    fn changed_files_are_reloaded_and_broken_ones_keep_the_old() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = cluster(dir.path(), &["a"]);
        let tls = Tls::load(files(&ca, "a"), Some("a")).expect("load");
        let before = tls.not_after();
        assert!(!tls.reload_if_changed().expect("unchanged"));
        assert_eq!(tls.generation(), 0);

        // A new certificate, moved over the old files as an operator would.
        let new = dir.path().join("new");
        std::fs::create_dir(&new).expect("dir");
        issue_files(&ca, &new, "a", &[], 20 * DAY).expect("issue");
        std::fs::rename(new.join("a.pem"), ca.join("a.pem")).expect("mv");
        std::fs::rename(new.join("a.key"), ca.join("a.key")).expect("mv");
        assert!(tls.reload_if_changed().expect("reload"));
        assert_eq!(tls.generation(), 1);
        assert!(
            tls.not_after() < before - 9 * 86_400,
            "the 20-day certificate is in use"
        );

        // Garbage in place of the certificate: an error, the previous material stays.
        std::fs::write(ca.join("a.pem"), "not a certificate").expect("write");
        assert!(tls.reload_if_changed().is_err());
        assert_eq!(tls.generation(), 1);
        assert_eq!(tls.node_id().as_deref(), Some("a"));
        // Reported once, not on every poll.
        assert!(!tls.reload_if_changed().expect("same broken files"));
    }

    #[test]
    fn expiry_in_words() {
        assert_eq!(in_words(30 * 86_400 + 5), "in 30 days");
        assert_eq!(in_words(7200), "in 2 hours");
        assert_eq!(in_words(-3 * 86_400), "expired 3 days ago");
    }
}
