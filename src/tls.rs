//! TLS for MQTT connections: the PEM files (CA, client certificate and key),
//! the rustls client configuration built from them (the ring provider, which
//! cross-builds for ARMv7 where aws-lc does not), and the permission check
//! for secret files.
//!
//! Two users: `config` parses the files when it validates them (so a wrong
//! file is a `check` error, not a connection that fails at 3 a.m.), and
//! `mqtt` builds the client configuration for each connection. Parsing takes
//! bytes ([`check`]); only [`read_pem`] and [`client_config`] touch the disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Files for a TLS connection; all optional (system roots are used otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{what} {path} holds no PEM {expected}")]
    Empty {
        what: &'static str,
        path: String,
        expected: &'static str,
    },
    #[error("ca_file {path}: {reason}")]
    Ca { path: String, reason: String },
    #[error("key_file {path} does not fit cert_file: {reason}")]
    Key { path: String, reason: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("no trusted CA certificates: neither the system store nor ca_file gave any")]
    NoRoots,
}

impl TlsError {
    /// The config key the problem is about, so `check` can point at it.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::Read { what, .. } | TlsError::Empty { what, .. } => what,
            TlsError::Ca { .. } | TlsError::NoRoots => "ca_file",
            TlsError::Key { .. } => "key_file",
            TlsError::Rustls(_) => "url",
        }
    }
}

/// The contents of one PEM file, with the key that names it (`ca_file`,
/// `cert_file`, `key_file`) and its path, for messages.
#[derive(Debug, Clone, Copy)]
pub struct Pem<'a> {
    pub what: &'static str,
    pub path: &'a Path,
    pub bytes: &'a [u8],
}

impl Pem<'_> {
    fn read_error(&self, source: std::io::Error) -> TlsError {
        TlsError::Read {
            what: self.what,
            path: self.path.display().to_string(),
            source,
        }
    }

    fn empty(&self, expected: &'static str) -> TlsError {
        TlsError::Empty {
            what: self.what,
            path: self.path.display().to_string(),
            expected,
        }
    }
}

/// Reads a PEM file from disk.
pub fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// Parses a CA file and a client identity (certificate and key, and that the
/// key matches the certificate) without connecting: what `outpost check` can
/// tell before the first handshake. System roots are not needed for that.
pub fn check(ca: Option<Pem<'_>>, identity: Option<(Pem<'_>, Pem<'_>)>) -> Result<(), TlsError> {
    if let Some(ca) = ca {
        add_ca(&mut rustls::RootCertStore::empty(), ca)?;
    }
    if let Some((cert, key)) = identity {
        let (chain, private) = client_identity(cert, key)?;
        builder()?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_client_auth_cert(chain, private)
            .map_err(|e| key_mismatch(key.path, e))?;
    }
    Ok(())
}

/// The rustls configuration for one connection: the system roots plus
/// `ca_file`, and the client identity when `cert_file` and `key_file` are
/// set. Reads the files.
pub fn client_config(files: &TlsFiles) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A system certificate rustls cannot use is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if let Some(ca) = &files.ca_file {
        let bytes = read_pem("ca_file", ca)?;
        add_ca(&mut roots, pem("ca_file", ca, &bytes))?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let builder = builder()?.with_root_certificates(roots);
    let config = match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => {
            let cert_bytes = read_pem("cert_file", cert)?;
            let key_bytes = read_pem("key_file", key)?;
            let (chain, private) = client_identity(
                pem("cert_file", cert, &cert_bytes),
                pem("key_file", key, &key_bytes),
            )?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| key_mismatch(key, e))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// A secret file (private key, password) of mode `mode` that others than
/// its owner can read: the warning to show, or `None`. Checked by `outpost
/// check` and at start, so a key copied with the wrong mode is noticed.
pub fn loose_permissions(what: &str, path: &Path, mode: u32) -> Option<String> {
    let mode = mode & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "{what} `{}` is readable by group or others (mode {mode:04o}); \
             `chmod 600` it, owned by the user outpost runs as",
            path.display()
        )
    })
}

fn pem<'a>(what: &'static str, path: &'a Path, bytes: &'a [u8]) -> Pem<'a> {
    Pem { what, path, bytes }
}

fn builder() -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, TlsError>
{
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?)
}

fn key_mismatch(key: &Path, e: rustls::Error) -> TlsError {
    TlsError::Key {
        path: key.display().to_string(),
        reason: e.to_string(),
    }
}

fn add_ca(roots: &mut rustls::RootCertStore, ca: Pem<'_>) -> Result<(), TlsError> {
    let mut n = 0;
    for cert in rustls_pemfile::certs(&mut &*ca.bytes) {
        let cert = cert.map_err(|source| ca.read_error(source))?;
        roots.add(cert).map_err(|e| TlsError::Ca {
            path: ca.path.display().to_string(),
            reason: e.to_string(),
        })?;
        n += 1;
    }
    if n == 0 {
        return Err(ca.empty("certificate"));
    }
    Ok(())
}

type Identity = (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

/// The client certificate chain and its key (PEM; PKCS#1, PKCS#8 or SEC1).
fn client_identity(cert: Pem<'_>, key: Pem<'_>) -> Result<Identity, TlsError> {
    let chain: Vec<_> = rustls_pemfile::certs(&mut &*cert.bytes)
        .collect::<Result<_, _>>()
        .map_err(|source| cert.read_error(source))?;
    if chain.is_empty() {
        return Err(cert.empty("certificate"));
    }
    let private = rustls_pemfile::private_key(&mut &*key.bytes)
        .map_err(|source| key.read_error(source))?
        .ok_or_else(|| key.empty("private key (PKCS#1, PKCS#8 or SEC1)"))?;
    Ok((chain, private))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_readable_key_is_reported_and_a_private_one_is_not() {
        let p = Path::new("/etc/outpost/k.pem");
        assert!(loose_permissions("key_file", p, 0o100640).is_some_and(|w| w.contains("0640")));
        assert_eq!(loose_permissions("key_file", p, 0o100600), None);
    }

    #[test]
    fn a_file_without_pem_blocks_is_named_with_its_key() {
        let p = Path::new("ca.pem");
        let e = check(
            Some(Pem {
                what: "ca_file",
                path: p,
                bytes: b"not a certificate",
            }),
            None,
        )
        .unwrap_err();
        assert_eq!(e.key(), "ca_file");
        assert_eq!(e.to_string(), "ca_file ca.pem holds no PEM certificate");
    }
}
