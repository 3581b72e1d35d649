//! TLS set-up for the second listener: loading a PEM certificate and key,
//! or generating and keeping a self-signed one in the data directory, and
//! its SHA-256 fingerprint for clients to pin.
//!
//! Only configuration lives here; the per-session rustls state is driven by
//! `session.rs` on the loop thread like any other input and output.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::ServerConfig;

/// Directory under `--data` holding the generated self-signed pair.
const SELF_SIGNED_DIR: &str = "tls";
const SELF_SIGNED_CERT: &str = "self-signed-cert.pem";
const SELF_SIGNED_KEY: &str = "self-signed-key.pem";
/// The names the kept certificate was made for, one a line.
const SELF_SIGNED_NAMES: &str = "self-signed-names";

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
/// the fingerprint clients pinned stays valid across restarts. When `names`
/// differ from those the kept certificate was made for, a new pair is made
/// and the old one is kept beside it under a new name (see [`retire`]), and
/// a warning says so: the fingerprint changes.
pub fn self_signed(data: &Path, names: &[String]) -> Result<(PathBuf, PathBuf), String> {
    let dir = data.join(SELF_SIGNED_DIR);
    let cert_path = dir.join(SELF_SIGNED_CERT);
    let key_path = dir.join(SELF_SIGNED_KEY);
    let names_path = dir.join(SELF_SIGNED_NAMES);
    let wanted = name_set(names);
    if cert_path.exists() && key_path.exists() {
        match kept_names(&cert_path, &names_path, &wanted)? {
            None => return Ok((cert_path, key_path)),
            Some(kept) => {
                let old = retire(&dir)?;
                log::warn!(
                    "--tls-self-signed names ({}) differ from the kept certificate's ({kept}): \
                     making a new certificate, so its fingerprint changes (clients that pinned \
                     the old one must pin the new one); the old one is kept as {}",
                    join(&wanted),
                    old.display()
                );
            }
        }
    }
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let generated = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| format!("cannot generate a self-signed certificate: {e}"))?;
    write_private(&key_path, generated.signing_key.serialize_pem().as_bytes())?;
    fs::write(&cert_path, generated.cert.pem())
        .map_err(|e| format!("cannot write {}: {e}", cert_path.display()))?;
    write_names(&names_path, &wanted)?;
    log::info!(
        "generated a self-signed certificate for {} in {}",
        names.join(", "),
        dir.display()
    );
    Ok((cert_path, key_path))
}

/// Host names as compared: trimmed, lowercase, each once, in order.
fn name_set(names: &[String]) -> BTreeSet<String> {
    names
        .iter()
        .map(|n| n.trim().to_ascii_lowercase())
        .collect()
}

fn join(names: &BTreeSet<String>) -> String {
    names
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `None` when the kept certificate was made for exactly `wanted`;
/// otherwise the names it was made for, for the warning. The names are
/// recorded beside it when it is made. A certificate made by a natterd
/// that did not record them is kept if it is valid for every wanted name
/// (checked as a client would check it), and they are recorded then.
fn kept_names(
    cert: &Path,
    names_file: &Path,
    wanted: &BTreeSet<String>,
) -> Result<Option<String>, String> {
    match fs::read_to_string(names_file) {
        Ok(text) => {
            let kept: BTreeSet<String> = text
                .lines()
                .map(|l| l.trim().to_ascii_lowercase())
                .filter(|l| !l.is_empty())
                .collect();
            Ok((kept != *wanted).then(|| join(&kept)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if valid_for_all(cert, wanted) {
                write_names(names_file, wanted)?;
                Ok(None)
            } else {
                Ok(Some(
                    "names not recorded, and not valid for all of these".into(),
                ))
            }
        }
        Err(e) => Err(format!("cannot read {}: {e}", names_file.display())),
    }
}

/// Whether the certificate in `cert` is valid for every name in `names`.
fn valid_for_all(cert: &Path, names: &BTreeSet<String>) -> bool {
    let Ok(der) = CertificateDer::from_pem_file(cert) else {
        return false;
    };
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(&der) else {
        return false;
    };
    names.iter().all(|name| {
        ServerName::try_from(name.as_str()).is_ok_and(|server_name| {
            rustls::client::verify_server_name(&parsed, &server_name).is_ok()
        })
    })
}

fn write_names(path: &Path, names: &BTreeSet<String>) -> Result<(), String> {
    let text: String = names.iter().map(|n| format!("{n}\n")).collect();
    fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Renames the kept pair (and its names) to `self-signed-cert.<unix
/// seconds>.pem` and so on, beside the new one, and returns the
/// certificate's new path. Nothing is deleted: a client that pinned the old
/// fingerprint can still be told what it was, and an operator can go back.
fn retire(dir: &Path) -> Result<PathBuf, String> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Two changes within one second get .1, .2, ... after the time.
    let mut tag = secs.to_string();
    let mut n = 0;
    while dir.join(format!("self-signed-cert.{tag}.pem")).exists() {
        n += 1;
        tag = format!("{secs}.{n}");
    }
    let moves = [
        (SELF_SIGNED_CERT, format!("self-signed-cert.{tag}.pem")),
        (SELF_SIGNED_KEY, format!("self-signed-key.{tag}.pem")),
        (SELF_SIGNED_NAMES, format!("self-signed-names.{tag}")),
    ];
    for (from, to) in &moves {
        let (from, to) = (dir.join(from), dir.join(to));
        match fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && from.ends_with(SELF_SIGNED_NAMES) => {}
            Err(e) => {
                return Err(format!(
                    "cannot rename {} to {}: {e}",
                    from.display(),
                    to.display()
                ))
            }
        }
    }
    Ok(dir.join(&moves[0].1))
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
    fn other_names_make_a_new_pair_and_keep_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let one = vec!["localhost".to_string()];
        let (cert, key) = self_signed(dir.path(), &one).unwrap();
        let first = load(&cert, &key).unwrap().fingerprint;
        let old_pem = fs::read(&cert).unwrap();
        // Another name: a new pair.
        let two = vec!["Example.test".to_string(), "localhost".to_string()];
        let (cert, key) = self_signed(dir.path(), &two).unwrap();
        let second = load(&cert, &key).unwrap().fingerprint;
        assert_ne!(first, second);
        // The same names in another order and case: kept.
        let (cert, key) =
            self_signed(dir.path(), &["localhost".into(), "example.test".into()]).unwrap();
        assert_eq!(load(&cert, &key).unwrap().fingerprint, second);
        let retired: Vec<_> = fs::read_dir(dir.path().join(SELF_SIGNED_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("self-signed-cert.") && n != SELF_SIGNED_CERT)
            .collect();
        assert_eq!(retired.len(), 1, "{retired:?}");
        let kept = dir.path().join(SELF_SIGNED_DIR).join(&retired[0]);
        assert_eq!(fs::read(kept).unwrap(), old_pem);
    }

    #[test]
    fn a_pair_without_recorded_names_is_kept_when_valid_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let (cert, key) = self_signed(dir.path(), &names).unwrap();
        let first = load(&cert, &key).unwrap().fingerprint;
        // As an earlier natterd left it: no names file.
        fs::remove_file(dir.path().join(SELF_SIGNED_DIR).join(SELF_SIGNED_NAMES)).unwrap();
        let (cert, key) = self_signed(dir.path(), &names[..1]).unwrap();
        assert_eq!(load(&cert, &key).unwrap().fingerprint, first);
        let (cert, key) = self_signed(dir.path(), &["other.test".into()]).unwrap();
        assert_ne!(load(&cert, &key).unwrap().fingerprint, first);
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
