//! TLS for the client side: what to trust (the compiled-in web roots, a PEM
//! file given with `--ca`, or one pinned certificate given with
//! `--fingerprint`), the rustls configuration built from that, and the
//! one-line explanations of a failed handshake. It owns no socket: the
//! handshake and the record I/O are `stream`'s.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use natter_proto::SHA256_LEN;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{self, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// The port natterd serves TLS on unless told otherwise.
pub const DEFAULT_TLS_PORT: u16 = 4443;

/// What the client accepts as proof that it reached the right server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// A certificate chain to one of Mozilla's roots (webpki-roots), valid
    /// for the host name. The default.
    WebRoots,
    /// A chain to one of the certificates in this PEM file, valid for the
    /// host name (`--ca`).
    Ca(PathBuf),
    /// Exactly the leaf certificate with this SHA-256 digest, whatever its
    /// issuer, names or dates (`--fingerprint`): how a self-signed natterd is
    /// trusted. The handshake signature is still checked with its key.
    Pinned([u8; SHA256_LEN]),
}

/// A ready client configuration and what it was built from (the latter
/// picks the words of an error).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// The rustls configuration, shared by every connection.
    pub config: Arc<ClientConfig>,
    /// What it trusts.
    pub trust: Trust,
}

impl TlsConfig {
    /// Builds the configuration for `trust`. Fails with a one-line reason when
    /// the `--ca` file cannot be read or holds no usable certificate.
    pub fn new(trust: Trust) -> Result<TlsConfig, String> {
        let provider = Arc::new(crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = match &trust {
            Trust::WebRoots => {
                let mut roots = RootCertStore::empty();
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                builder.with_root_certificates(roots)
            }
            Trust::Ca(path) => {
                let roots = Arc::new(load_roots(path)?);
                let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| format!("TLS: --ca {}: {e}", path.display()))?;
                builder.with_webpki_verifier(verifier)
            }
            Trust::Pinned(digest) => {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Pinned {
                        digest: *digest,
                        provider,
                    }))
            }
        };
        Ok(TlsConfig {
            config: Arc::new(builder.with_no_client_auth()),
            trust,
        })
    }

    /// The configuration the flags `--tls`, `--ca FILE` and `--fingerprint FP`
    /// ask for, as natter and natter-bench both take them: `None` without
    /// `--tls`; `--ca` wins over `--fingerprint`; neither means the web roots.
    /// Fails with a one-line reason for a malformed fingerprint or an
    /// unreadable `--ca` file.
    pub fn from_flags(
        tls: bool,
        ca: Option<&Path>,
        fingerprint: Option<&str>,
    ) -> Result<Option<TlsConfig>, String> {
        if !tls {
            return Ok(None);
        }
        let trust = match (ca, fingerprint) {
            (Some(ca), _) => Trust::Ca(ca.to_path_buf()),
            (None, Some(fp)) => Trust::Pinned(parse_fingerprint(fp)?),
            (None, None) => Trust::WebRoots,
        };
        TlsConfig::new(trust).map(Some)
    }

    /// The name the certificate must be valid for (and the SNI sent): the
    /// host as the person typed it; an IP address becomes an IP name.
    pub fn server_name(host: &str) -> io::Result<ServerName<'static>> {
        ServerName::try_from(host.to_string()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TLS: {host} is not a valid host name for TLS"),
            )
        })
    }

    /// A one-line account of a failed handshake, for a person. `host` is the
    /// name the certificate was checked against.
    pub fn explain(&self, err: &rustls::Error, host: &str) -> String {
        use rustls::Error as E;
        let pinned = matches!(self.trust, Trust::Pinned(_));
        match err {
            E::InvalidCertificate(CertificateError::ApplicationVerificationFailure) if pinned => {
                "TLS: certificate fingerprint does not match --fingerprint".into()
            }
            // A bad signature here means a certificate with the issuer's name
            // but not made with its key: e.g. another natterd's self-signed
            // certificate (they share a subject) given as --ca.
            E::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature,
            ) => match &self.trust {
                Trust::Ca(path) => format!(
                    "TLS: certificate not trusted (not issued by a certificate in {})",
                    path.display()
                ),
                _ => "TLS: certificate not trusted (self-signed? use --fingerprint or --ca)".into(),
            },
            E::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => format!("TLS: certificate is not valid for {host}"),
            E::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            ) => "TLS: certificate has expired".into(),
            E::InvalidCertificate(
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
            ) => "TLS: certificate is not valid yet (check the clock)".into(),
            E::InvalidCertificate(other) => format!("TLS: certificate rejected: {other:?}"),
            E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
                "TLS: handshake failed: the server did not answer in TLS (is this its TLS port?)"
                    .into()
            }
            E::AlertReceived(alert) => format!("TLS: the server refused the handshake ({alert:?})"),
            other => format!("TLS: handshake failed: {other}"),
        }
    }
}

/// Reads every certificate in a PEM file into a root store.
fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("TLS: cannot read --ca {shown}: {}", pem_error(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("TLS: --ca {shown}: {}", pem_error(&e)))?;
    if certs.is_empty() {
        return Err(format!("TLS: --ca {shown} holds no PEM certificate"));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("TLS: --ca {shown}: unusable certificate: {e}"))?;
    }
    Ok(roots)
}

/// pki-types' PEM error, with the I/O cause shown plainly.
fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("{other:?}"),
    }
}

/// Parses a `--fingerprint`: 32 bytes of hex, with or without `:` between
/// the pairs (as natterd prints it, or as `sha256sum` would), in any case
/// ([`natter_proto::parse_fingerprint`]).
pub fn parse_fingerprint(s: &str) -> Result<[u8; SHA256_LEN], String> {
    natter_proto::parse_fingerprint(s).map_err(|_| {
        format!(
            "--fingerprint must be a SHA-256 digest: 64 hex digits, optionally \
             as pairs joined by ':' (got {s:?})"
        )
    })
}

/// A certificate's SHA-256 fingerprint in natterd's form (`AB:CD:...`).
pub fn fingerprint(der: &[u8]) -> String {
    natter_proto::format_fingerprint(&sha256(der))
}

fn sha256(der: &[u8]) -> [u8; SHA256_LEN] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; SHA256_LEN];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The `--fingerprint` verifier: the leaf certificate must hash to the pinned
/// digest. Chain, names and dates are not looked at (a self-signed
/// certificate has no chain, and the pin already names one exact
/// certificate); the handshake signatures are verified with the
/// certificate's key, so a server without the matching private key fails.
#[derive(Debug)]
struct Pinned {
    digest: [u8; SHA256_LEN],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Not a secret, so a plain comparison leaks nothing worth having.
        if sha256(end_entity.as_ref()) == self.digest {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(
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
        crypto::verify_tls13_signature(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_fingerprint_names_the_flag_and_a_good_one_parses() {
        let err = parse_fingerprint("abcd").expect_err("too short");
        assert!(err.starts_with("--fingerprint must be"), "{err}");
        assert_eq!(parse_fingerprint(&"0".repeat(64)), Ok([0; SHA256_LEN]));
    }

    #[test]
    fn fingerprint_of_bytes_is_sha256_in_natterd_form() {
        // SHA-256 of the empty string.
        assert_eq!(
            fingerprint(b""),
            "E3:B0:C4:42:98:FC:1C:14:9A:FB:F4:C8:99:6F:B9:24:\
             27:AE:41:E4:64:9B:93:4C:A4:95:99:1B:78:52:B8:55"
        );
    }

    #[test]
    fn a_missing_ca_file_is_a_clear_error() {
        let err = TlsConfig::new(Trust::Ca("/nonexistent/ca.pem".into())).expect_err("no file");
        assert!(
            err.starts_with("TLS: cannot read --ca /nonexistent/ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn configs_build_and_errors_read_plainly() {
        let web = TlsConfig::new(Trust::WebRoots).expect("web roots");
        let pinned = TlsConfig::new(Trust::Pinned([0; 32])).expect("pinned");
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert!(web.explain(&unknown, "h").contains("not trusted"));
        let mismatch =
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure);
        assert_eq!(
            pinned.explain(&mismatch, "h"),
            "TLS: certificate fingerprint does not match --fingerprint"
        );
        let forged = rustls::Error::InvalidCertificate(CertificateError::BadSignature);
        let ca = TlsConfig {
            config: Arc::clone(&web.config),
            trust: Trust::Ca("ca.pem".into()),
        };
        assert_eq!(
            ca.explain(&forged, "h"),
            "TLS: certificate not trusted (not issued by a certificate in ca.pem)"
        );
        let name = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        assert!(web.explain(&name, "example.org").contains("example.org"));
        assert!(TlsConfig::server_name("127.0.0.1").is_ok());
        assert!(TlsConfig::server_name("not a name").is_err());
    }
}
