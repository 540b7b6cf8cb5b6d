//! Certificate checks of the client side: a peer's certificate must chain to the cluster CA
//! and name the member we meant to reach; an admin API's must chain to the CA and match the
//! host name or name a member.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

use super::identity::{cert_info, provider};

fn algorithms() -> WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

/// Checks that `chain` (leaf first) chains to `roots` now.
pub(crate) fn chains_to(roots: &RootCertStore, chain: &[CertificateDer<'_>]) -> Result<(), Error> {
    let parsed = ParsedCertificate::try_from(&chain[0])?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        roots,
        &chain[1..],
        UnixTime::now(),
        algorithms().all,
    )
}

/// Which server certificates a client accepts, besides chaining to the CA.
#[derive(Debug, Clone)]
enum Expect {
    /// Exactly this member (peer connections).
    Member(String),
    /// Valid for the host name asked for, or naming any member (an admin API serving a node
    /// certificate, which names a member rather than a host).
    HostOrMember,
}

/// Checks a server's certificate: it must chain to `roots` and match what the client expects.
#[derive(Debug)]
pub struct ServerVerifier {
    roots: Arc<RootCertStore>,
    expect: Expect,
}

impl ServerVerifier {
    /// For a peer connection: the server must name member `expect`.
    pub fn member(roots: Arc<RootCertStore>, expect: &str) -> Self {
        ServerVerifier {
            roots,
            expect: Expect::Member(expect.to_string()),
        }
    }

    /// For HTTPS to an admin API: the host name asked for, or any member.
    pub fn host_or_member(roots: Arc<RootCertStore>) -> Self {
        ServerVerifier {
            roots,
            expect: Expect::HostOrMember,
        }
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            algorithms().all,
        )?;
        let named = || {
            cert_info(end_entity.as_ref())
                .map(|i| i.node_id)
                .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))
        };
        let ok = match &self.expect {
            Expect::Member(id) => named()?.as_deref() == Some(id.as_str()),
            Expect::HostOrMember => {
                rustls::client::verify_server_name(&parsed, server_name).is_ok() || named()?.is_some()
            }
        };
        if ok {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(Error::InvalidCertificate(CertificateError::NotValidForName))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}
