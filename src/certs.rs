//! `standin certs`: make a cluster CA, issue node certificates from it, and show what a
//! certificate file holds (member id, names, expiry). Thin over [`crate::tls`].

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::cli::{exit, CliError};
use crate::tls;

fn failed(e: tls::TlsError) -> CliError {
    CliError {
        message: e.to_string(),
        code: exit::REFUSED,
    }
}

/// `standin certs init DIR`: a new cluster CA in `dir`.
pub fn init(dir: &Path, name: &str, valid_for: Duration) -> Result<(), CliError> {
    let files = tls::init_ca(dir, name, valid_for).map_err(failed)?;
    println!(
        "CA certificate {} and key {} (mode 0600) written.\n\
         Issue a certificate per member: standin certs issue ID --ca {}",
        files.cert.display(),
        files.key.display(),
        dir.display()
    );
    Ok(())
}

/// `standin certs issue ID --ca DIR`: a node certificate and key for member `id`.
pub fn issue(
    id: &str,
    ca_dir: &Path,
    out: Option<&Path>,
    sans: &[String],
    valid_for: Duration,
) -> Result<(), CliError> {
    crate::config::validate_member_name(id).map_err(|e| CliError {
        message: e.to_string(),
        code: exit::USAGE,
    })?;
    let out = out.unwrap_or(ca_dir);
    let files = tls::issue_files(ca_dir, out, id, sans, valid_for).map_err(failed)?;
    println!(
        "Certificate {} and key {} (mode 0600) for member {id} written; valid until {}.\n\
         In {id}'s config:\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"",
        files.cert.display(),
        files.key.display(),
        rfc3339(files.not_after),
        tls::CaFiles::in_dir(ca_dir).cert.display(),
        files.cert.display(),
        files.key.display(),
    );
    Ok(())
}

/// What `standin certs show` prints.
#[derive(Debug, Serialize)]
pub struct CertSummary {
    pub file: String,
    /// The member id it names (URI SAN `standin:node:<id>`), if any.
    pub member: Option<String>,
    pub not_after_unix: i64,
    pub expires_in_seconds: i64,
}

/// `standin certs show FILE`: the member a certificate names and when it expires.
pub fn show(file: &Path, json: bool) -> Result<(), CliError> {
    let pem = std::fs::read(file).map_err(|e| CliError {
        message: format!("cannot read {}: {e}", file.display()),
        code: exit::USAGE,
    })?;
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).map_err(|e| CliError {
        message: format!("{}: not a PEM certificate: {e}", file.display()),
        code: exit::USAGE,
    })?;
    let info = tls::cert_info(der.as_ref()).map_err(|e| CliError {
        message: format!("{}: {e}", file.display()),
        code: exit::USAGE,
    })?;
    let summary = CertSummary {
        file: file.display().to_string(),
        member: info.node_id,
        not_after_unix: info.not_after,
        expires_in_seconds: info.not_after - tls::unix_now(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&summary).unwrap_or_default());
    } else {
        println!(
            "{}: member {}, expires {} ({})",
            summary.file,
            summary.member.as_deref().unwrap_or("(none)"),
            rfc3339(summary.not_after_unix),
            tls::in_words(summary.expires_in_seconds)
        );
    }
    Ok(())
}

fn rfc3339(unix: i64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64))
        .to_string()
}
