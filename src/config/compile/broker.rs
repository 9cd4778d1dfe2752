//! The keys `[upstream]` and `[[mqtt]]` share: the broker URL, client id,
//! credentials (a `password`, or the first line of a `password_file`),
//! keep-alive and TLS files, which are parsed now so a wrong one is a
//! `check` error rather than a connection that fails at 3 a.m.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::super::raw::RawBroker;
use super::super::units::HumanDuration;
use super::super::{BrokerConfig, BrokerUrl, Secret};
use super::Compiler;
use crate::tls::{self, Pem, TlsError, TlsFiles};

const TLS_KEYS: [&str; 3] = ["ca_file", "cert_file", "key_file"];

impl Compiler<'_, '_> {
    /// The broker of one section (`who`, for messages); `None` (with
    /// diagnostics) when any of its keys is wrong. Its client id must be
    /// unique per broker.
    pub(super) fn broker(
        &mut self,
        raw: RawBroker,
        default_client_id: String,
        who: String,
    ) -> Option<BrokerConfig> {
        let url = &raw.url;
        let client_id_span = raw
            .client_id
            .as_ref()
            .map_or_else(|| url.span(), Spanned::span);
        let client_id = raw.client_id.map_or(default_client_id, Spanned::into_inner);
        let parsed = match BrokerUrl::parse(url.get_ref()) {
            Ok(u) => Some(u),
            Err(e) => {
                self.err(url.span(), e);
                None
            }
        };
        let mut ok = true;
        if raw.password.is_some() {
            self.inline_password_warning(url.span());
        }
        let password = self.password(raw.password, raw.password_file, &mut ok);
        if password.is_some() && raw.username.is_none() {
            self.diags
                .push(self.src.whole("a password is set without a `username`"));
            ok = false;
        }
        let is_tls = parsed.as_ref().map(|u| u.tls);
        let spans = raw.tls.each_ref().map(|f| f.as_ref().map(Spanned::span));
        let files = self.tls_files(raw.tls, is_tls, url.span(), &mut ok);
        let keep_alive = self.keep_alive(raw.keep_alive, &mut ok);
        if client_id.is_empty() || client_id.len() > 128 {
            self.err(url.span(), "client_id must be 1 to 128 characters");
            ok = false;
        }
        let url_span = url.span();
        let cfg = ok.then_some(BrokerConfig {
            url: parsed?,
            client_id,
            username: raw.username,
            password,
            tls: files,
            keep_alive,
        })?;
        if let Err(e) = self.check_tls(&cfg.tls) {
            let at = TLS_KEYS.iter().position(|k| *k == e.key());
            let span = at.and_then(|i| spans[i].clone()).unwrap_or(url_span);
            self.err(span, e.to_string());
            return None;
        }
        self.unique_client_id(&cfg.url, &cfg.client_id, who, client_id_span);
        Some(cfg)
    }

    /// `password` or the first line of `password_file` (not both).
    fn password(
        &mut self,
        inline: Option<String>,
        file: Option<Spanned<String>>,
        ok: &mut bool,
    ) -> Option<Secret> {
        let f = match (inline, file) {
            (Some(_), Some(f)) => {
                self.err(
                    f.span(),
                    "give either `password` or `password_file`, not both",
                );
                *ok = false;
                return None;
            }
            (Some(p), None) => return Some(Secret::new(p)),
            (None, Some(f)) => f,
            (None, None) => return None,
        };
        let Some(path) = self.existing_file(&f, "password file") else {
            *ok = false;
            return None;
        };
        match self.files.read_to_string(&path) {
            Ok(s) if s.trim_end_matches(['\r', '\n']).is_empty() => {
                self.err(
                    f.span(),
                    format!("password file `{}` is empty", path.display()),
                );
                *ok = false;
                None
            }
            Ok(s) => {
                if let Some(w) = self.loose_permissions("password_file", &path) {
                    self.warn(f.span(), w);
                }
                // The first line, as documented; a trailing newline is not part of it.
                let first = s.lines().next().unwrap_or_default();
                Some(Secret::new(first.trim_end_matches('\r').to_string()))
            }
            Err(e) => {
                self.err(
                    f.span(),
                    format!("cannot read password file `{}`: {e}", path.display()),
                );
                *ok = false;
                None
            }
        }
    }

    /// `ca_file`, `cert_file` and `key_file`: existing files, only with an
    /// `mqtts://` URL (`is_tls`: `None` when the URL itself is wrong), the
    /// certificate and key together.
    fn tls_files(
        &mut self,
        fields: [Option<Spanned<String>>; 3],
        is_tls: Option<bool>,
        url_span: Range<usize>,
        ok: &mut bool,
    ) -> TlsFiles {
        let mut paths: [Option<PathBuf>; 3] = Default::default();
        for ((field, name), path) in fields.iter().zip(TLS_KEYS).zip(&mut paths) {
            let Some(f) = field else { continue };
            if is_tls == Some(false) {
                self.err(f.span(), format!("`{name}` needs an mqtts:// url"));
                *ok = false;
            }
            *path = self.existing_file(f, name);
            *ok &= path.is_some();
        }
        let [ca_file, cert_file, key_file] = paths;
        if cert_file.is_some() != key_file.is_some() {
            self.err(
                url_span.clone(),
                "`cert_file` and `key_file` go together (mutual TLS needs both)",
            );
            *ok = false;
        }
        if let Some(key) = &key_file
            && let Some(w) = self.loose_permissions("key_file", key)
        {
            let span = fields[2].as_ref().map_or(url_span, Spanned::span);
            self.warn(span, w);
        }
        TlsFiles {
            ca_file,
            cert_file,
            key_file,
        }
    }

    fn keep_alive(&mut self, k: Option<Spanned<HumanDuration>>, ok: &mut bool) -> Duration {
        const DEFAULT: Duration = Duration::from_secs(30);
        match k {
            Some(k) if k.get_ref().0 < Duration::from_secs(5) => {
                self.err(k.span(), "keep_alive must be at least 5s");
                *ok = false;
                DEFAULT
            }
            Some(k) => k.into_inner().0,
            None => DEFAULT,
        }
    }

    /// Reads and parses the PEM files: the CA, then the client certificate
    /// and key (and that they belong together).
    fn check_tls(&self, files: &TlsFiles) -> Result<(), TlsError> {
        let read = |what: &'static str, path: &PathBuf| {
            self.files.read(path).map_err(|source| TlsError::Read {
                what,
                path: path.display().to_string(),
                source,
            })
        };
        if let Some(ca) = &files.ca_file {
            let bytes = read("ca_file", ca)?;
            let pem = Pem {
                what: "ca_file",
                path: ca,
                bytes: &bytes,
            };
            tls::check(Some(pem), None)?;
        }
        if let (Some(cert), Some(key)) = (&files.cert_file, &files.key_file) {
            let (cert_bytes, key_bytes) = (read("cert_file", cert)?, read("key_file", key)?);
            let cert = Pem {
                what: "cert_file",
                path: cert,
                bytes: &cert_bytes,
            };
            let key = Pem {
                what: "key_file",
                path: key,
                bytes: &key_bytes,
            };
            tls::check(None, Some((cert, key)))?;
        }
        Ok(())
    }

    /// A password written into the config file itself, when that file is
    /// readable by others.
    fn inline_password_warning(&mut self, span: Range<usize>) {
        if let Some(w) = self.loose_permissions("this config file", self.src.path) {
            self.warn(
                span,
                format!("{w}, and it holds a `password`; or move it into a `password_file`"),
            );
        }
    }
}
