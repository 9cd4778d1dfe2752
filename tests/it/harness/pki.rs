//! Certificates for the TLS tests, made with the `openssl` command.

use super::broker::TlsListener;
use super::process::run_tool;
use std::fs;
use std::path::{Path, PathBuf};

/// Certificates made at test time with the `openssl` command: a test CA, a
/// broker certificate for `localhost` signed by it, client certificates
/// signed by it (an RSA one whose key is PKCS#1 and, converted, PKCS#8, and
/// an EC one whose key is SEC1), and a second CA that signed nothing of ours.
/// Made once per test binary, in Cargo's per-target temporary folder.
pub struct Pki {
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// RSA client certificate; its key as PKCS#1 and as PKCS#8.
    pub client_rsa: PathBuf,
    pub client_rsa_pkcs1: PathBuf,
    pub client_rsa_pkcs8: PathBuf,
    /// EC (P-256) client certificate and its SEC1 key.
    pub client_ec: PathBuf,
    pub client_ec_sec1: PathBuf,
}

impl Pki {
    /// The certificates, made on first use.
    pub fn get() -> &'static Pki {
        static PKI: std::sync::OnceLock<Pki> = std::sync::OnceLock::new();
        PKI.get_or_init(Pki::generate)
    }

    fn generate() -> Pki {
        let dir =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("pki-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let p = |n: &str| dir.join(n);
        for (name, cn) in [("ca", "outpost test CA"), ("other-ca", "some other CA")] {
            let (key, pem, subj) = (
                format!("{name}.key"),
                format!("{name}.pem"),
                format!("/CN={cn}"),
            );
            openssl(
                &dir,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-keyout",
                    &key,
                    "-out",
                    &pem,
                    "-days",
                    "30",
                    "-subj",
                    &subj,
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            );
        }
        let ec_key = |out: &str| {
            openssl(
                &dir,
                &[
                    "ecparam",
                    "-name",
                    "prime256v1",
                    "-genkey",
                    "-noout",
                    "-out",
                    out,
                ],
            )
        };
        ec_key("server.key");
        ec_key("client-ec.sec1.key");
        openssl(
            &dir,
            &[
                "genrsa",
                "-traditional",
                "-out",
                "client-rsa.pkcs1.key",
                "2048",
            ],
        );
        openssl(
            &dir,
            &[
                "pkcs8",
                "-topk8",
                "-nocrypt",
                "-in",
                "client-rsa.pkcs1.key",
                "-out",
                "client-rsa.pkcs8.key",
            ],
        );
        fs::write(
            p("server.ext"),
            "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        fs::write(p("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (key, out, cn, ext) in [
            ("server.key", "server.pem", "localhost", "server.ext"),
            (
                "client-rsa.pkcs1.key",
                "client-rsa.pem",
                "outpost-rsa",
                "client.ext",
            ),
            (
                "client-ec.sec1.key",
                "client-ec.pem",
                "outpost-ec",
                "client.ext",
            ),
        ] {
            let (csr, subj) = (format!("{out}.csr"), format!("/CN={cn}"));
            openssl(
                &dir,
                &["req", "-new", "-key", key, "-out", &csr, "-subj", &subj],
            );
            openssl(
                &dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    out,
                    "-days",
                    "30",
                    "-extfile",
                    ext,
                ],
            );
        }
        // Client keys as a careful user keeps them.
        use std::os::unix::fs::PermissionsExt;
        for k in [
            "client-rsa.pkcs1.key",
            "client-rsa.pkcs8.key",
            "client-ec.sec1.key",
        ] {
            fs::set_permissions(p(k), fs::Permissions::from_mode(0o600)).unwrap();
        }
        let pki = Pki {
            ca: p("ca.pem"),
            other_ca: p("other-ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
            client_rsa: p("client-rsa.pem"),
            client_rsa_pkcs1: p("client-rsa.pkcs1.key"),
            client_rsa_pkcs8: p("client-rsa.pkcs8.key"),
            client_ec: p("client-ec.pem"),
            client_ec_sec1: p("client-ec.sec1.key"),
        };
        // The key formats are what the tests claim they are.
        for (key, first) in [
            (&pki.client_rsa_pkcs1, "-----BEGIN RSA PRIVATE KEY-----"),
            (&pki.client_rsa_pkcs8, "-----BEGIN PRIVATE KEY-----"),
            (&pki.client_ec_sec1, "-----BEGIN EC PRIVATE KEY-----"),
        ] {
            let text = fs::read_to_string(key).unwrap();
            assert_eq!(text.lines().next(), Some(first), "{}", key.display());
        }
        pki
    }

    /// A TLS listener with this PKI's broker certificate (for `localhost`).
    pub fn listener(&self, require_certificate: bool) -> TlsListener {
        TlsListener {
            ca: self.ca.clone(),
            cert: self.server_cert.clone(),
            key: self.server_key.clone(),
            require_certificate,
        }
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    run_tool("openssl", &["/usr/bin/openssl"], args, dir);
}
