//! TLS for the connections contextd makes (Postgres, Redis): rustls with the ring provider,
//! trusting the system's roots, a CA file, or (where the operator asked for encryption
//! without verification, as libpq's `sslmode=require` does) anything.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Nothing: the connection is encrypted, the server not authenticated.
    Nothing,
    /// The chain up to a trusted root, not the name (libpq's `verify-ca`).
    Chain,
    /// The chain and that the certificate names the host connected to.
    Full,
}

/// The one crypto provider, so no process-wide default is needed.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The roots to trust: the system's (from the OS store) when `ca_file` is `None` or
/// `also_system`, plus the certificates of `ca_file` (PEM).
pub fn roots(ca_file: Option<&Path>, also_system: bool) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    if ca_file.is_none() || also_system {
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            // A system root rustls cannot use is skipped, as browsers do.
            let _ = roots.add(cert);
        }
    }
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading the CA file {}", path.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing the CA file {} (PEM)", path.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "the CA file {} holds no certificate",
            path.display()
        );
        for cert in certs {
            roots.add(cert).with_context(|| {
                format!("a certificate of {} is not a usable CA", path.display())
            })?;
        }
    }
    Ok(roots)
}

/// A client configuration checking as `verify` says, against `roots`.
pub fn client_config(verify: Verify, roots: RootCertStore) -> anyhow::Result<ClientConfig> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let config = match verify {
        Verify::Full => builder.with_root_certificates(roots).with_no_client_auth(),
        Verify::Chain => {
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("building the certificate verifier")?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly { inner }))
                .with_no_client_auth()
        }
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Anything { provider }))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// Checks the chain, not the name: libpq's `verify-ca`.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepts any certificate (the handshake's signatures are still checked): encryption without
/// authentication, what the operator asked for with `sslmode=require` and no root file.
#[derive(Debug)]
struct Anything {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Anything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Why a TLS handshake failed, in an operator's words, when `error`'s chain holds a rustls
/// error; `None` otherwise.
pub fn explain(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(rustls) = e.downcast_ref::<rustls::Error>() {
            return Some(describe(rustls));
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(rustls) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(describe(rustls));
        }
        next = e.source();
    }
    None
}

fn describe(error: &rustls::Error) -> String {
    use rustls::{CertificateError, Error};
    let why = match error {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the server's certificate is not signed by a trusted CA (give the CA with \
             sslrootcert=PATH, or redis.tls_ca_file for Redis)"
                .to_owned()
        }
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "the server's certificate does not name the host connected to (connect by a name \
              the certificate holds, or use sslmode=verify-ca)"
            .to_owned(),
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the server's certificate has expired".to_owned(),
        other => other.to_string(),
    };
    format!("TLS handshake failed: {why} ({error})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_is_an_error_naming_it() {
        let missing = roots(Some(Path::new("/nonexistent/ca.pem")), false).unwrap_err();
        assert!(
            format!("{missing:#}").contains("/nonexistent/ca.pem"),
            "{missing:#}"
        );
        let empty = std::env::temp_dir().join(format!("contextd-empty-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = roots(Some(&empty), false).unwrap_err();
        assert!(format!("{error:#}").contains("no certificate"), "{error:#}");
        let _ = std::fs::remove_file(empty);
    }

    #[test]
    fn every_verification_level_builds() {
        for verify in [Verify::Nothing, Verify::Chain, Verify::Full] {
            let roots = roots(None, true).unwrap();
            client_config(verify, roots).unwrap();
        }
    }

    #[test]
    fn a_name_mismatch_is_explained() {
        let error = rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, error);
        let text = explain(&io).unwrap();
        assert!(text.starts_with("TLS handshake failed"), "{text}");
        assert!(text.contains("does not name the host"), "{text}");
    }
}
