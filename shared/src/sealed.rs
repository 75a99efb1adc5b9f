//! AES-256-GCM sealing (aws-lc-rs) with random 96-bit nonces, bound to a context.
//!
//! A sealed value is `nonce (12 bytes) || ciphertext || tag (16 bytes)`. The context is the
//! AEAD's associated data: it is not stored, and opening with another context fails, so a
//! sealed value cannot be moved to another place (another row, another column) unnoticed.
//! Used by the control plane for private keys at rest (under data keys wrapped by a
//! key-encryption key) and by the data plane for its snapshot cache file.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf;

/// Length of a key, in bytes (AES-256).
pub const KEY_LEN: usize = 32;
/// Length of the authentication tag, in bytes.
const TAG_LEN: usize = 16;

/// Why sealing or opening failed. No variant carries key material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
    /// The sealed value is shorter than a nonce and a tag.
    #[error("sealed value is truncated")]
    Truncated,
    /// Authentication failed: another key, altered bytes, or another context.
    #[error("sealed value does not open: wrong key, altered data or another context")]
    Open,
}

/// An AES-256-GCM key. Its `Debug` shows nothing of the key.
pub struct SealingKey(LessSafeKey);

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(..)")
    }
}

// === impl SealingKey ===

impl SealingKey {
    /// The key made of these 32 bytes.
    pub fn new(bytes: &[u8; KEY_LEN]) -> Self {
        // Invariant: AES-256-GCM takes exactly KEY_LEN bytes, which the type guarantees.
        let key = UnboundKey::new(&AES_256_GCM, bytes).unwrap_or_else(|_| unreachable!());
        Self(LessSafeKey::new(key))
    }

    /// The key derived with HKDF-SHA256 from `secret` (key material, e.g. a private key's DER)
    /// for the purpose named by `info`.
    pub fn derive(secret: &[u8], salt: &[u8], info: &[u8]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(secret);
        let mut bytes = [0u8; KEY_LEN];
        // Invariant: HKDF-SHA256 can expand to 32 bytes (at most 255 * 32), and the output
        // length is that of HKDF_SHA256 (32 bytes).
        let info = [info];
        match prk.expand(&info, hkdf::HKDF_SHA256) {
            Ok(okm) => {
                let _ = okm.fill(&mut bytes);
            }
            Err(_) => unreachable!(),
        }
        let key = Self::new(&bytes);
        bytes.fill(0);
        key
    }

    /// Seals `plaintext` under `context`: `nonce || ciphertext || tag`.
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut out[NONCE_LEN..],
            )
            .map_err(|_| SealError::Open)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens what [`SealingKey::seal`] made with the same key and context.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(SealError::Truncated);
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Truncated)?;
        let mut buffer = rest.to_vec();
        let opened = self
            .0
            .open_in_place(nonce, Aad::from(context), &mut buffer)
            .map_err(|_| SealError::Open)?;
        let len = opened.len();
        buffer.truncate(len);
        Ok(buffer)
    }
}

/// 32 fresh random bytes: a new key.
pub fn random_key() -> Result<[u8; KEY_LEN], SealError> {
    let mut bytes = [0u8; KEY_LEN];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| SealError::Random)?;
    Ok(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SealingKey {
        SealingKey::new(&[byte; KEY_LEN])
    }

    #[test]
    fn opens_what_it_sealed_with_the_same_context() {
        let sealed = key(1).seal(b"row-1", b"secret").unwrap();
        assert_eq!(key(1).open(b"row-1", &sealed).unwrap(), b"secret");
        // A fresh nonce each time: sealing twice gives two values.
        assert_ne!(sealed, key(1).seal(b"row-1", b"secret").unwrap());
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
    }

    #[test]
    fn another_context_key_or_byte_does_not_open() {
        let sealed = key(1).seal(b"row-1", b"secret").unwrap();
        assert_eq!(key(1).open(b"row-2", &sealed), Err(SealError::Open));
        assert_eq!(key(2).open(b"row-1", &sealed), Err(SealError::Open));
        for i in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[i] ^= 0x01;
            assert_eq!(
                key(1).open(b"row-1", &tampered),
                Err(SealError::Open),
                "byte {i}"
            );
        }
        assert_eq!(
            key(1).open(b"row-1", &sealed[..27]),
            Err(SealError::Truncated)
        );
        assert_eq!(
            key(1).open(b"row-1", &sealed[..sealed.len() - 1]),
            Err(SealError::Open)
        );
    }

    #[test]
    fn derived_keys_depend_on_secret_salt_and_info() {
        let sealed = SealingKey::derive(b"secret", b"salt", b"info")
            .seal(b"", b"x")
            .unwrap();
        let opens = |k: SealingKey| k.open(b"", &sealed).is_ok();
        assert!(opens(SealingKey::derive(b"secret", b"salt", b"info")));
        assert!(!opens(SealingKey::derive(b"secreT", b"salt", b"info")));
        assert!(!opens(SealingKey::derive(b"secret", b"salT", b"info")));
        assert!(!opens(SealingKey::derive(b"secret", b"salt", b"infO")));
        assert_ne!(random_key().unwrap(), random_key().unwrap());
    }
}
