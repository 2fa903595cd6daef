//! Pod signatures (`docs/pod-format.md`, "Signature"): an Ed25519 signature (RFC 8032, pure
//! Ed25519) of the bytes of `manifest.json` exactly as stored in the pod, carried in the pod's
//! last entry `signature.ed25519` (64 bytes). The manifest records every section's size and
//! sha256 (and the verity root hash), so the signature binds them all; a verifier checks the
//! signature, then the sections against the manifest (the launcher: kernel and initramfs before
//! boot, the rootfs block by block through dm-verity, or whole with `--verify`).
//!
//! Keys are standard PEM: PKCS#8 `PRIVATE KEY` and SPKI `PUBLIC KEY` (what `openssl genpkey
//! -algorithm ed25519` and `openssl pkey -pubout` write).

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use thiserror::Error;

use crate::reader::{Pod, SIGNATURE_LEN};

/// Why a key could not be used or a pod's signature was refused.
#[derive(Debug, Error)]
pub enum SignatureError {
    #[error("not an Ed25519 PKCS#8 PEM private key ({0})")]
    PrivateKey(String),
    #[error("not an Ed25519 SPKI PEM public key ({0})")]
    PublicKey(String),
    #[error("the pod is not signed (no signature.ed25519 entry)")]
    Unsigned,
    #[error(
        "the signature does not verify with this public key (wrong key, or the manifest or signature was changed)"
    )]
    Mismatch,
}

/// A private key from PKCS#8 PEM.
pub fn signing_key_from_pem(pem: &str) -> Result<SigningKey, SignatureError> {
    SigningKey::from_pkcs8_pem(pem).map_err(|e| SignatureError::PrivateKey(e.to_string()))
}

/// A public key from SPKI PEM.
pub fn verifying_key_from_pem(pem: &str) -> Result<VerifyingKey, SignatureError> {
    VerifyingKey::from_public_key_pem(pem).map_err(|e| SignatureError::PublicKey(e.to_string()))
}

/// A key pair from 32 secret bytes, as (PKCS#8 PEM private, SPKI PEM public).
pub fn key_pair_pem(secret: &[u8; 32]) -> Result<(String, String), SignatureError> {
    let key = SigningKey::from_bytes(secret);
    let private = key
        .to_pkcs8_pem(Default::default())
        .map_err(|e| SignatureError::PrivateKey(e.to_string()))?;
    let public = key
        .verifying_key()
        .to_public_key_pem(Default::default())
        .map_err(|e| SignatureError::PublicKey(e.to_string()))?;
    Ok((private.to_string(), public))
}

/// The signature of `manifest_bytes` (the signed bytes) with `key`.
pub fn sign(key: &SigningKey, manifest_bytes: &[u8]) -> [u8; SIGNATURE_LEN] {
    key.sign(manifest_bytes).to_bytes()
}

/// Checks `signature` over `manifest_bytes` with `key` (strict: no malleable signatures).
pub fn verify_bytes(
    key: &VerifyingKey,
    manifest_bytes: &[u8],
    signature: &[u8; SIGNATURE_LEN],
) -> Result<(), SignatureError> {
    let sig = Signature::from_bytes(signature);
    key.verify_strict(manifest_bytes, &sig)
        .map_err(|_| SignatureError::Mismatch)
}

/// Checks `pod`'s signature with `key`. Reads nothing but what opening the pod read: the
/// sections are checked against the manifest separately.
pub fn verify_pod(pod: &Pod, key: &VerifyingKey) -> Result<(), SignatureError> {
    let sig = pod.signature().ok_or(SignatureError::Unsigned)?;
    verify_bytes(key, &pod.layout().manifest_bytes, sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_signatures_bind_the_bytes() {
        let (private, public) = key_pair_pem(&[9u8; 32]).unwrap();
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
        let key = signing_key_from_pem(&private).unwrap();
        let public = verifying_key_from_pem(&public).unwrap();
        let sig = sign(&key, b"manifest");
        verify_bytes(&public, b"manifest", &sig).unwrap();
        assert!(matches!(
            verify_bytes(&public, b"manifesT", &sig),
            Err(SignatureError::Mismatch)
        ));
        let mut bad = sig;
        bad[10] ^= 1;
        assert!(verify_bytes(&public, b"manifest", &bad).is_err());
        let (_, other) = key_pair_pem(&[8u8; 32]).unwrap();
        let other = verifying_key_from_pem(&other).unwrap();
        assert!(verify_bytes(&other, b"manifest", &sig).is_err());
        assert!(matches!(
            verifying_key_from_pem(&private),
            Err(SignatureError::PublicKey(_))
        ));
        assert!(signing_key_from_pem("junk").is_err());
    }
}
