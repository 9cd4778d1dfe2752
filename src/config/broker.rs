//! Where an MQTT broker is and how to log in: shared by `[upstream]` and `[[mqtt]]`.

use std::fmt;
use std::time::Duration;

use crate::tls::TlsFiles;

/// `mqtt://host:port` or `mqtts://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    pub fn parse(s: &str) -> Result<BrokerUrl, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("tcp://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("ssl://") {
            (true, r)
        } else {
            return Err(format!(
                "`{s}` is not an MQTT URL; write it like \"mqtt://host:1883\" or \"mqtts://host:8883\""
            ));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('@') {
            return Err(
                "put credentials in `username` and `password_file`, not in the URL".to_string(),
            );
        }
        if rest.contains('/') || rest.contains('?') {
            return Err(format!("`{s}`: an MQTT URL has no path or query"));
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("`{s}`: unclosed `[` in IPv6 address"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => parse_port(p, s)?,
                None if after.is_empty() => default_port,
                None => return Err(format!("`{s}`: unexpected `{after}` after the address")),
            };
            (h.to_string(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), parse_port(p, s)?),
                None => (rest.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(format!("`{s}` has no host"));
        }
        Ok(BrokerUrl { tls, host, port })
    }
}

fn parse_port(p: &str, s: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("`{s}`: invalid port `{p}`")),
        Ok(port) => Ok(port),
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// A password: never printed, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Everything needed to open one MQTT connection.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerConfig {
    pub url: BrokerUrl,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub tls: TlsFiles,
    pub keep_alive: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(s: &str, tls: bool, host: &str, port: u16) {
        let u = BrokerUrl::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!((u.tls, u.host.as_str(), u.port), (tls, host, port), "{s}");
    }

    #[test]
    fn urls_with_and_without_ports_parse() {
        check("mqtt://127.0.0.1:1883", false, "127.0.0.1", 1883);
        check("mqtt://broker", false, "broker", 1883);
        check(
            "mqtts://broker.example.com",
            true,
            "broker.example.com",
            8883,
        );
        check("mqtts://h:8884/", true, "h", 8884);
        check("mqtt://[::1]:1999", false, "::1", 1999);
        check("mqtt://[::1]", false, "::1", 1883);
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        for s in [
            "http://x",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:99999",
            "mqtt://u:p@h",
            "mqtt://h/path",
        ] {
            assert!(BrokerUrl::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let s = Secret::new("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
