//! [`explain`]: a failed or lost broker connection turned into a short
//! reason a person can act on ("not signed by a trusted CA", "requires a
//! client certificate"), for the log of every MQTT connection.

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
}
