//! Turning a [`BrokerConfig`] into rumqttc options: client id, credentials,
//! keep-alive, packet limits and TLS (rustls with the ring provider, which
//! cross-builds for ARMv7 where aws-lc does not; see PITFALLS.md).

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
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("no trusted CA certificates: neither the system store nor ca_file gave any")]
    NoRoots,
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

fn read_pem(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
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
        let pem = read_pem("ca_file", ca)?;
        let mut n = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|source| TlsError::Read {
                what: "ca_file",
                path: ca.display().to_string(),
                source,
            })?;
            roots.add(cert)?;
            n += 1;
        }
        if n == 0 {
            return Err(TlsError::Empty {
                what: "ca_file",
                path: ca.display().to_string(),
                expected: "certificate",
            });
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match (&cfg.tls.cert_file, &cfg.tls.key_file) {
        (Some(cert), Some(key)) => {
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
            builder.with_client_auth_cert(chain, private)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}
