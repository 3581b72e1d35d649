//! TLS set-up for the second listener: loading a PEM certificate and key,
//! or generating and keeping a self-signed one in the data directory, and
//! its SHA-256 fingerprint for clients to pin.
//!
//! Only configuration lives here; the per-session rustls state is driven by
//! `session.rs` on the loop thread like any other input and output.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// Directory under `--data` holding the generated self-signed pair.
const SELF_SIGNED_DIR: &str = "tls";
const SELF_SIGNED_CERT: &str = "self-signed-cert.pem";
const SELF_SIGNED_KEY: &str = "self-signed-key.pem";

/// A ready server configuration and what to tell the operator about it.
pub struct TlsSetup {
    /// Shared by every TLS session.
    pub config: Arc<ServerConfig>,
    /// SHA-256 of the leaf certificate, `AB:CD:...`
    /// ([`natter_proto::format_fingerprint`]).
    pub fingerprint: String,
}

/// Loads `cert` (a PEM chain, leaf first) and `key` (a PEM private key).
pub fn load(cert: &Path, key: &Path) -> Result<TlsSetup, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate {}: {e}", cert.display()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| format!("no certificate in {}", cert.display()))?;
    let fingerprint = fingerprint(leaf.as_ref());
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read private key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key do not work together: {e}"))?;
    Ok(TlsSetup {
        config: Arc::new(config),
        fingerprint,
    })
}

/// Returns the paths of a self-signed certificate and key for `names`,
/// generating them on first use. The pair is kept in the data directory so
/// the fingerprint clients pinned stays valid across restarts.
pub fn self_signed(data: &Path, names: &[String]) -> Result<(PathBuf, PathBuf), String> {
    let dir = data.join(SELF_SIGNED_DIR);
    let cert_path = dir.join(SELF_SIGNED_CERT);
    let key_path = dir.join(SELF_SIGNED_KEY);
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let generated = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| format!("cannot generate a self-signed certificate: {e}"))?;
    write_private(&key_path, generated.signing_key.serialize_pem().as_bytes())?;
    fs::write(&cert_path, generated.cert.pem())
        .map_err(|e| format!("cannot write {}: {e}", cert_path.display()))?;
    log::info!(
        "generated a self-signed certificate for {} in {}",
        names.join(", "),
        dir.display()
    );
    Ok((cert_path, key_path))
}

/// Writes a file only its owner can read (the private key).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// SHA-256 of a DER certificate in the protocol's fingerprint form
/// (`AB:CD:...`, as `openssl x509 -fingerprint -sha256` prints it).
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    natter_proto::format_fingerprint(digest.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_pair_is_made_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string()];
        let (cert, key) = self_signed(dir.path(), &names).unwrap();
        let first = load(&cert, &key).unwrap().fingerprint;
        assert_eq!(first.len(), 32 * 3 - 1);
        // Reused, not regenerated: pinned fingerprints survive restarts.
        let (cert, key) = self_signed(dir.path(), &names).unwrap();
        assert_eq!(load(&cert, &key).unwrap().fingerprint, first);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "private key readable by others");
    }

    #[test]
    fn bad_files_give_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        fs::write(&junk, "not pem").unwrap();
        let err = load(&junk, &junk).err().unwrap();
        assert!(err.contains("no certificate"), "{err}");
        let missing = dir.path().join("missing.pem");
        assert!(load(&missing, &missing)
            .err()
            .unwrap()
            .contains("cannot read"));
    }
}
