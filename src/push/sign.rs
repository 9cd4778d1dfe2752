//! Signed pushes: what is signed, and the ed25519 keys that sign and check
//! it (ring's implementation). Pure: keys are made from bytes given; making
//! a new key (which needs the system's randomness) is `outpost rules keygen`.
//!
//! The signed message leaves no room for two readings: a fixed tag, then
//! the target name, the version and the rules text, each preceded by its
//! length as 8 bytes big-endian:
//!
//! ```text
//! "outpost-rules-push-v1\0" len(target) target len(version) version len(rules) rules
//! ```
//!
//! where `target` is `gateway:ID` or `group:NAME` (see `Target::name`): a
//! push signed for one gateway or group is refused by any other.
//!
//! Key formats, as text:
//!
//! - public key (`[remote] public_key`, `public_key_file`): the 32 raw key
//!   bytes in base64 (what `outpost rules keygen` writes to `KEY.pub` and
//!   prints), or a PEM `PUBLIC KEY` (SubjectPublicKeyInfo, as `openssl pkey
//!   -pubout` writes);
//! - private key (`outpost rules push --key`): a PEM `PRIVATE KEY`
//!   (PKCS#8 v1, as `outpost rules keygen` and `openssl genpkey -algorithm
//!   ed25519` write it; v2, with the public key inside, is read too).
//!
//! A signature is the 64-byte ed25519 signature in base64.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use super::{Target, Version};

/// What precedes every signed message: which format it is.
const TAG: &[u8] = b"outpost-rules-push-v1\0";

/// The DER of a SubjectPublicKeyInfo of an Ed25519 key, before its 32 bytes
/// (RFC 8410).
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The DER of a PKCS#8 v1 Ed25519 private key, before its 32-byte seed
/// (RFC 8410; what `openssl genpkey -algorithm ed25519` writes).
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A private key as PKCS#8 v1 DER, from its 32-byte seed.
pub fn pkcs8_from_seed(seed: &[u8; 32]) -> Vec<u8> {
    [PKCS8_V1_PREFIX.as_slice(), seed.as_slice()].concat()
}

/// The bytes a push's signature signs.
pub fn signed_message(target: &Target, version: &Version, rules: &str) -> Vec<u8> {
    let target = target.name();
    let fields = [
        target.as_bytes(),
        version.as_str().as_bytes(),
        rules.as_bytes(),
    ];
    let mut m = Vec::with_capacity(TAG.len() + fields.iter().map(|f| 8 + f.len()).sum::<usize>());
    m.extend_from_slice(TAG);
    for f in fields {
        m.extend_from_slice(&(f.len() as u64).to_be_bytes());
        m.extend_from_slice(f);
    }
    m
}

/// Why a signature is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the push is not signed, and this gateway takes only signed pushes")]
    Missing,
    #[error("the signature is not base64 of 64 bytes")]
    Malformed,
    #[error(
        "the signature does not match this gateway's public key (another key, or the push was changed)"
    )]
    Mismatch,
}

/// An ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// From its text: base64 of the 32 raw bytes, or a PEM `PUBLIC KEY`.
    pub fn parse(text: &str) -> Result<PublicKey, String> {
        let text = text.trim();
        if text.starts_with("-----BEGIN") {
            return PublicKey::from_pem(text);
        }
        let bytes = STANDARD
            .decode(text)
            .map_err(|_| "a public key is base64 (or a PEM PUBLIC KEY)".to_string())?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map(PublicKey)
            .map_err(|_| {
                format!(
                    "an ed25519 public key is 32 bytes, this one is {}",
                    bytes.len()
                )
            })
    }

    fn from_pem(text: &str) -> Result<PublicKey, String> {
        let mut rest = text.as_bytes();
        while let Some((item, after)) = rustls_pemfile::read_one_from_slice(rest)
            .map_err(|e| format!("the PEM cannot be read: {e:?}"))?
        {
            rest = after;
            if let rustls_pemfile::Item::SubjectPublicKeyInfo(spki) = item {
                let der = spki.as_ref();
                return match der.strip_prefix(SPKI_PREFIX.as_slice()) {
                    Some(key) if key.len() == 32 => {
                        let mut k = [0u8; 32];
                        k.copy_from_slice(key);
                        Ok(PublicKey(k))
                    }
                    _ => Err("the PUBLIC KEY is not an ed25519 key".into()),
                };
            }
        }
        Err("no PUBLIC KEY in the PEM".into())
    }

    /// The 32 raw bytes in base64: the form `public_key` takes.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Checks `signature` (base64) over `message`.
    pub fn verify(&self, message: &[u8], signature: Option<&str>) -> Result<(), SignatureError> {
        let sig = signature.ok_or(SignatureError::Missing)?;
        let sig = STANDARD
            .decode(sig.trim())
            .map_err(|_| SignatureError::Malformed)?;
        if sig.len() != 64 {
            return Err(SignatureError::Malformed);
        }
        UnparsedPublicKey::new(&ED25519, self.0)
            .verify(message, &sig)
            .map_err(|_| SignatureError::Mismatch)
    }
}

/// Shows the key itself (it is public), so `check` and logs can name it.
impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

/// An ed25519 private key, for `outpost rules push --key`.
pub struct SigningKey(Ed25519KeyPair);

/// Never shows the key.
impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(public {})", self.public().to_base64())
    }
}

impl SigningKey {
    /// From a PEM `PRIVATE KEY` (PKCS#8 v1 or v2).
    pub fn from_pem(text: &str) -> Result<SigningKey, String> {
        let mut rest = text.as_bytes();
        while let Some((item, after)) = rustls_pemfile::read_one_from_slice(rest)
            .map_err(|e| format!("the PEM cannot be read: {e:?}"))?
        {
            rest = after;
            if let rustls_pemfile::Item::Pkcs8Key(der) = item {
                return SigningKey::from_pkcs8(der.secret_pkcs8_der());
            }
        }
        Err("no PRIVATE KEY (PKCS#8) in the file".into())
    }

    /// From PKCS#8 DER (v1 or v2).
    pub fn from_pkcs8(der: &[u8]) -> Result<SigningKey, String> {
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map(SigningKey)
            .map_err(|e| format!("not an ed25519 private key ({e})"))
    }

    pub fn public(&self) -> PublicKey {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.0.public_key().as_ref());
        PublicKey(k)
    }

    /// The signature of `message`, in base64.
    pub fn sign(&self, message: &[u8]) -> String {
        STANDARD.encode(self.0.sign(message).as_ref())
    }
}

/// `der` as PEM with this label (`PRIVATE KEY`, `PUBLIC KEY`).
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 is ASCII.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The SubjectPublicKeyInfo DER of `key` (for a PEM `PUBLIC KEY`).
pub fn spki_der(key: &PublicKey) -> Vec<u8> {
    [SPKI_PREFIX.as_slice(), key.0.as_slice()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seed(first: u8) -> [u8; 32] {
        std::array::from_fn(|i| first.wrapping_add(i as u8))
    }

    /// A fixed key (seed 1..=32): tests need no randomness.
    fn key() -> SigningKey {
        SigningKey::from_pkcs8(&pkcs8_from_seed(&seed(1))).unwrap()
    }

    #[test]
    fn a_known_seed_gives_its_known_public_key() {
        // RFC 8032, section 7.1, TEST 1.
        let mut sk = [0u8; 32];
        for (i, b) in sk.iter_mut().enumerate() {
            let hex = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        let k = SigningKey::from_pkcs8(&pkcs8_from_seed(&sk)).unwrap();
        let mut want = [0u8; 32];
        for (i, b) in want.iter_mut().enumerate() {
            let hex = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        assert_eq!(k.public(), PublicKey(want));
    }

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn gw() -> Target {
        Target::Gateway("gw1".into())
    }

    #[test]
    fn the_signed_message_is_the_tag_then_each_field_after_its_length() {
        let m = signed_message(&gw(), &v("7"), "ab");
        let mut want = b"outpost-rules-push-v1\0".to_vec();
        want.extend([0, 0, 0, 0, 0, 0, 0, 11]);
        want.extend(b"gateway:gw1");
        want.extend([0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend(b"7");
        want.extend([0, 0, 0, 0, 0, 0, 0, 2]);
        want.extend(b"ab");
        assert_eq!(m, want);
    }

    proptest! {
        /// Length prefixes: moving bytes between version and rules, or
        /// changing the target, always changes the message.
        #[test]
        fn different_pushes_never_sign_the_same_bytes(
            v1 in "[0-9a.]{1,6}", r1 in ".{0,12}", v2 in "[0-9a.]{1,6}", r2 in ".{0,12}",
            group in any::<bool>(),
        ) {
            let t2 = if group { Target::Group("gw1".into()) } else { gw() };
            let same = v1 == v2 && r1 == r2 && t2 == gw();
            prop_assert_eq!(
                signed_message(&gw(), &v(&v1), &r1) == signed_message(&t2, &v(&v2), &r2),
                same
            );
        }
    }

    #[test]
    fn a_signature_verifies_with_its_key_only_and_only_over_its_message() {
        let k = key();
        let m = signed_message(&gw(), &v("7"), "[[rule]]\n");
        let sig = k.sign(&m);
        assert_eq!(k.public().verify(&m, Some(&sig)), Ok(()));
        let other = signed_message(&Target::Group("gw1".into()), &v("7"), "[[rule]]\n");
        assert_eq!(
            k.public().verify(&other, Some(&sig)),
            Err(SignatureError::Mismatch)
        );
        let stranger = SigningKey::from_pkcs8(&pkcs8_from_seed(&seed(9))).unwrap();
        assert_eq!(
            stranger.public().verify(&m, Some(&sig)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(k.public().verify(&m, None), Err(SignatureError::Missing));
        assert_eq!(
            k.public().verify(&m, Some("not base64!")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            k.public().verify(&m, Some(&STANDARD.encode([0u8; 63]))),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn public_keys_read_as_base64_or_as_a_pem_public_key() {
        let k = key().public();
        assert_eq!(PublicKey::parse(&k.to_base64()), Ok(k));
        assert_eq!(PublicKey::parse(&format!("  {}\n", k.to_base64())), Ok(k));
        let pem_text = pem("PUBLIC KEY", &spki_der(&k));
        assert_eq!(PublicKey::parse(&pem_text), Ok(k));
        assert!(PublicKey::parse("AAAA").unwrap_err().contains("32 bytes"));
        assert!(PublicKey::parse("%%%").unwrap_err().contains("base64"));
        let not_ed25519 = pem("PUBLIC KEY", &[0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(PublicKey::parse(&not_ed25519).is_err());
        let cert_only = pem("CERTIFICATE", &[0x30, 0x00]);
        assert!(
            PublicKey::parse(&cert_only)
                .unwrap_err()
                .contains("no PUBLIC KEY")
        );
    }

    #[test]
    fn private_keys_read_from_a_pem_private_key() {
        let k = SigningKey::from_pem(&pem("PRIVATE KEY", &pkcs8_from_seed(&seed(1)))).unwrap();
        assert_eq!(k.public(), key().public());
        assert!(SigningKey::from_pem("nothing here").is_err());
        assert!(SigningKey::from_pem(&pem("PRIVATE KEY", &[0x30, 0x00])).is_err());
        // Debug never shows the private key.
        assert!(format!("{k:?}").starts_with("SigningKey(public "));
    }
}
