//! Turning a [`BrokerConfig`] into rumqttc options: client id, credentials,
//! keep-alive, packet limits and TLS (rustls with the ring provider, which
//! cross-builds for ARMv7 where aws-lc does not; see PITFALLS.md).
//!
//! TLS is all or nothing: an `mqtts://` broker gets a TLS transport or no
//! connection at all, never a plaintext fallback. SNI is the URL's host name
//! (rumqttc hands it to rustls as the server name; an IP address sends none).
//! [`explain`] turns a failed connection into a short reason a person can act
//! on ("not signed by a trusted CA", "requires a client certificate").

use std::sync::Arc;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};

use crate::config::BrokerConfig;

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

/// rumqttc options for one connection. `clean_session` is true: sled, not
/// the broker session, is the source of truth for what is unacknowledged.
pub fn mqtt_options(cfg: &BrokerConfig, max_packet: usize) -> Result<MqttOptions, TlsError> {
    let mut o = MqttOptions::new(&cfg.client_id, &cfg.url.host, cfg.url.port);
    o.set_keep_alive(cfg.keep_alive);
    o.set_clean_session(true);
    o.set_max_packet_size(max_packet, max_packet);
    if let (Some(u), p) = (&cfg.username, &cfg.password) {
        o.set_credentials(u, p.as_ref().map_or("", |p| p.expose()));
    }
    if cfg.url.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls_config(cfg)?),
        )));
    }
    Ok(o)
}

/// Reads and parses every TLS file of `cfg` (CA, client certificate and key,
/// and that the key matches the certificate) without connecting: what
/// `outpost check` can tell before the first handshake. System roots are not
/// needed for that and are not loaded.
pub fn check_tls_files(cfg: &BrokerConfig) -> Result<(), TlsError> {
    if let Some(ca) = &cfg.tls.ca_file {
        let mut roots = rustls::RootCertStore::empty();
        add_ca_file(&mut roots, ca)?;
    }
    if let (Some(cert), Some(key)) = (&cfg.tls.cert_file, &cfg.tls.key_file) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (chain, private) = client_identity(cert, key)?;
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_client_auth_cert(chain, private)
            .map_err(|e| TlsError::Key {
                path: key.display().to_string(),
                reason: e.to_string(),
            })?;
    }
    Ok(())
}

/// A secret file (private key, password) that others than its owner can
/// read: the warning to show, or `None`. Checked by `outpost check` and at
/// start, so a key copied with the wrong mode is noticed.
pub fn loose_permissions(what: &str, path: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "{what} `{}` is readable by group or others (mode {mode:04o}); \
             `chmod 600` it, owned by the user outpost runs as",
            path.display()
        )
    })
}

/// A short, plain reason for a failed or lost broker connection: what a
/// person reading the log needs to fix it. `host` is the host outpost
/// connected to. Never includes credentials (rumqttc's errors hold none).
pub fn explain(err: &rumqttc::ConnectionError, host: &str) -> String {
    use rumqttc::{ConnectReturnCode as Code, ConnectionError as E};
    match err {
        E::ConnectionRefused(code) => {
            return match code {
                Code::BadUserNamePassword => {
                    "the broker refused the login: bad username or password".into()
                }
                Code::NotAuthorized => {
                    "the broker refused the login: not authorized (wrong username or password, or this client may not connect)".into()
                }
                Code::BadClientId => "the broker refused the client_id".into(),
                Code::ServiceUnavailable => "the broker is unavailable (it refused the connection)".into(),
                Code::RefusedProtocolVersion => {
                    "the broker does not accept MQTT 3.1.1".into()
                }
                Code::Success => "the broker answered success with an error".into(),
            };
        }
        E::NetworkTimeout => return "no answer from the broker (connection timed out)".into(),
        E::Tls(rumqttc::TlsError::DNSName(_)) => {
            return format!("`{host}` is not a valid TLS server name");
        }
        _ => {}
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return explain_tls(t, host);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return explain_tls(t, host);
            }
            use std::io::ErrorKind as K;
            match io.kind() {
                K::ConnectionRefused => {
                    return "connection refused (is the broker running, and the port right?)"
                        .into();
                }
                K::TimedOut => return "connection timed out".into(),
                K::UnexpectedEof | K::ConnectionReset | K::BrokenPipe
                    if matches!(err, E::Tls(_)) =>
                {
                    return "the broker closed the connection during the TLS handshake \
                            (a plain mqtt:// port, or it refused our client certificate?)"
                        .into();
                }
                K::ConnectionReset | K::UnexpectedEof | K::BrokenPipe => {
                    return format!("the broker closed the connection ({io})");
                }
                _ => {}
            }
        }
        cur = e.source();
    }
    err.to_string()
}

fn explain_tls(e: &rustls::Error, host: &str) -> String {
    use rustls::AlertDescription as A;
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "TLS: the broker's certificate is not signed by a trusted CA \
                 (unknown issuer); set `ca_file` to the CA that signed it"
                .into(),
            C::Expired | C::ExpiredContext { .. } => {
                "TLS: the broker's certificate has expired".into()
            }
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "TLS: the broker's certificate is not valid yet (is this machine's clock right?)"
                    .into()
            }
            C::NotValidForNameContext { presented, .. } => format!(
                "TLS: the broker's certificate is not valid for `{host}` (name mismatch; it names {})",
                presented.join(", ")
            ),
            #[allow(deprecated)]
            C::NotValidForName => {
                format!("TLS: the broker's certificate is not valid for `{host}` (name mismatch)")
            }
            C::Revoked => "TLS: the broker's certificate has been revoked".into(),
            other => format!("TLS: the broker's certificate was refused: {other:?}"),
        },
        rustls::Error::AlertReceived(a) => match a {
            A::CertificateRequired => "TLS: the broker requires a client certificate; \
                 set `cert_file` and `key_file`"
                .into(),
            A::HandshakeFailure => "TLS: the broker refused the handshake (no client \
                 certificate where one is required, or no common cipher)"
                .into(),
            A::UnknownCA | A::BadCertificate | A::CertificateUnknown | A::AccessDenied => format!(
                "TLS: the broker refused our client certificate ({a:?}); is it signed by a CA the broker trusts?"
            ),
            A::CertificateExpired => {
                "TLS: the broker says our client certificate has expired".into()
            }
            A::CertificateRevoked => {
                "TLS: the broker says our client certificate was revoked".into()
            }
            A::ProtocolVersion => {
                "TLS: the broker offers no TLS version we accept (1.2 or 1.3)".into()
            }
            other => format!("TLS: the broker sent alert {other:?}"),
        },
        rustls::Error::InvalidMessage(_) => {
            "TLS: the broker did not answer with TLS (a plain mqtt:// port?)".into()
        }
        other => format!("TLS: {other}"),
    }
}

fn read_pem(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

fn add_ca_file(roots: &mut rustls::RootCertStore, ca: &std::path::Path) -> Result<(), TlsError> {
    let pem = read_pem("ca_file", ca)?;
    let mut n = 0;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|source| TlsError::Read {
            what: "ca_file",
            path: ca.display().to_string(),
            source,
        })?;
        roots.add(cert).map_err(|e| TlsError::Ca {
            path: ca.display().to_string(),
            reason: e.to_string(),
        })?;
        n += 1;
    }
    if n == 0 {
        return Err(TlsError::Empty {
            what: "ca_file",
            path: ca.display().to_string(),
            expected: "certificate",
        });
    }
    Ok(())
}

type Identity = (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

/// The client certificate chain and its key (PEM; PKCS#1, PKCS#8 or SEC1).
fn client_identity(cert: &std::path::Path, key: &std::path::Path) -> Result<Identity, TlsError> {
    let pem = read_pem("cert_file", cert)?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read {
            what: "cert_file",
            path: cert.display().to_string(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::Empty {
            what: "cert_file",
            path: cert.display().to_string(),
            expected: "certificate",
        });
    }
    let pem = read_pem("key_file", key)?;
    let private = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| TlsError::Read {
            what: "key_file",
            path: key.display().to_string(),
            source,
        })?
        .ok_or_else(|| TlsError::Empty {
            what: "key_file",
            path: key.display().to_string(),
            expected: "private key (PKCS#1, PKCS#8 or SEC1)",
        })?;
    Ok((chain, private))
}

fn tls_config(cfg: &BrokerConfig) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A system certificate rustls cannot use is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if let Some(ca) = &cfg.tls.ca_file {
        add_ca_file(&mut roots, ca)?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match (&cfg.tls.cert_file, &cfg.tls.key_file) {
        (Some(cert), Some(key)) => {
            let (chain, private) = client_identity(cert, key)?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| TlsError::Key {
                    path: key.display().to_string(),
                    reason: e.to_string(),
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::ConnectionError;
    use rustls::{AlertDescription, CertificateError};

    /// A TLS failure as rumqttc reports one from the handshake: rustls'
    /// error inside the io::Error tokio-rustls returns, inside rumqttc's.
    fn handshake(e: rustls::Error) -> ConnectionError {
        ConnectionError::Tls(rumqttc::TlsError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e,
        )))
    }

    fn check(e: rustls::Error, expect: &str) {
        let got = explain(&handshake(e), "broker.example.com");
        assert!(got.contains(expect), "{got:?} lacks {expect:?}");
    }

    #[test]
    fn certificate_problems_are_named_plainly() {
        check(
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            "not signed by a trusted CA",
        );
        check(
            rustls::Error::InvalidCertificate(CertificateError::Expired),
            "has expired",
        );
        check(
            rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                expected: rustls::pki_types::ServerName::try_from("broker.example.com")
                    .unwrap() // a literal valid DNS name
                    .to_owned(),
                presented: vec!["DnsName(\"other.example\")".into()],
            }),
            "not valid for `broker.example.com` (name mismatch",
        );
        check(
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
            "requires a client certificate",
        );
        check(
            rustls::Error::AlertReceived(AlertDescription::UnknownCA),
            "refused our client certificate",
        );
    }

    #[test]
    fn refused_logins_and_dead_ports_are_named_plainly() {
        let e = ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::NotAuthorized);
        assert!(explain(&e, "h").contains("not authorized"));
        let e = ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::BadUserNamePassword);
        assert!(explain(&e, "h").contains("bad username or password"));
        let e = ConnectionError::Io(std::io::ErrorKind::ConnectionRefused.into());
        assert!(explain(&e, "h").contains("connection refused"));
    }

    #[test]
    fn a_group_readable_key_is_reported_and_a_private_one_is_not() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        std::fs::write(&p, "x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(loose_permissions("key_file", &p).is_some_and(|w| w.contains("0640")));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(loose_permissions("key_file", &p), None);
    }
}
