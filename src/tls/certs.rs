//! Certificates made easy: a cluster CA (`standin certs init DIR`) and node certificates
//! signed by it (`standin certs issue ID --ca DIR`), on rcgen. Keys are ECDSA P-256; key files
//! are written mode 0600, never readable by other users.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};

use super::identity::{check_private, node_uri, unix_now, TlsError};

/// The files of a cluster CA in its directory.
#[derive(Debug, Clone)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CaFiles {
    pub fn in_dir(dir: &Path) -> CaFiles {
        CaFiles {
            cert: dir.join("ca.pem"),
            key: dir.join("ca.key"),
        }
    }
}

/// The files of an issued node certificate.
#[derive(Debug, Clone)]
pub struct IssuedFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When it expires (Unix seconds).
    pub not_after: i64,
}

fn other(e: impl std::fmt::Display) -> TlsError {
    TlsError::Other(e.to_string())
}

/// Writes `data` to a new file (never over an existing one) with `mode`.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| TlsError::Other(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| TlsError::Other(format!("cannot write {}: {e}", path.display())))
}

fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that run behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::seconds(valid_for.as_secs().min(i64::MAX as u64) as i64);
}

/// Makes a cluster CA in `dir` (created 0700 if missing): `ca.pem` and `ca.key` (0600).
/// Refuses to overwrite an existing CA.
pub fn init_ca(dir: &Path, name: &str, valid_for: Duration) -> Result<CaFiles, TlsError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| TlsError::Other(format!("cannot create {}: {e}", dir.display())))?;
    let files = CaFiles::in_dir(dir);
    if files.cert.exists() || files.key.exists() {
        return Err(TlsError::Other(format!(
            "{} already holds a CA; remove ca.pem and ca.key first to make a new one",
            dir.display()
        )));
    }
    let key = KeyPair::generate().map_err(other)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, valid_for);
    let cert = params.self_signed(&key).map_err(other)?;
    write_new(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&files.cert, cert.pem().as_bytes(), 0o644)?;
    Ok(files)
}

/// A node certificate for member `id`, signed by the CA (PEM texts): its URI SAN
/// `standin:node:<id>`, plus `sans` (DNS names or IP addresses, for the admin API and the
/// store). Returns the certificate and key PEMs.
pub fn issue(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    id: &str,
    sans: &[String],
    valid_for: Duration,
) -> Result<(String, String), TlsError> {
    issue_between(ca_cert_pem, ca_key_pem, id, sans, None, valid_for)
}

/// Like [`issue`], with an explicit start of validity (tests make expired certificates).
pub fn issue_between(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    id: &str,
    sans: &[String],
    not_before: Option<time::OffsetDateTime>,
    valid_for: Duration,
) -> Result<(String, String), TlsError> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(|e| other(format!("CA key: {e}")))?;
    let issuer =
        Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).map_err(|e| other(format!("CA certificate: {e}")))?;
    let key = KeyPair::generate().map_err(other)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("standin node {id}"));
    params.distinguished_name = dn;
    let uri = node_uri(id).try_into().map_err(other)?;
    params.subject_alt_names.push(SanType::URI(uri));
    for san in sans {
        params
            .subject_alt_names
            .push(match san.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    san.clone()
                        .try_into()
                        .map_err(|e| other(format!("--san {san}: {e}")))?,
                ),
            });
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params, valid_for);
    if let Some(start) = not_before {
        params.not_before = start;
        params.not_after = start + time::Duration::seconds(valid_for.as_secs() as i64);
    }
    let cert = params.signed_by(&key, &issuer).map_err(other)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Issues a certificate for `id` with the CA in `ca_dir` and writes `<id>.pem` and `<id>.key`
/// (0600) into `out_dir`. Refuses to overwrite existing files.
pub fn issue_files(
    ca_dir: &Path,
    out_dir: &Path,
    id: &str,
    sans: &[String],
    valid_for: Duration,
) -> Result<IssuedFiles, TlsError> {
    let ca = CaFiles::in_dir(ca_dir);
    for p in [
        out_dir.join(format!("{id}.pem")),
        out_dir.join(format!("{id}.key")),
    ] {
        if p.exists() {
            return Err(TlsError::Other(format!(
                "{} exists; issue into another directory (--out) and move the files over it \
                 (a running node picks them up)",
                p.display()
            )));
        }
    }
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| TlsError::Other(format!("cannot read {}: {e}", p.display())))
    };
    check_private("--ca", &ca.key)?;
    let (cert, key) = issue(&read(&ca.cert)?, &read(&ca.key)?, id, sans, valid_for)?;
    let files = IssuedFiles {
        cert: out_dir.join(format!("{id}.pem")),
        key: out_dir.join(format!("{id}.key")),
        not_after: unix_now() + valid_for.as_secs() as i64,
    };
    write_new(&files.key, key.as_bytes(), 0o600)?;
    write_new(&files.cert, cert.as_bytes(), 0o644)?;
    Ok(files)
}
