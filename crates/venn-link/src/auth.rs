//! Token authentication bound to the TLS session.
//!
//! Both parties hold the same secret token. After the TLS 1.3 handshake each
//! side computes the session's exporter value (RFC 8446 §7.5, label
//! `EXPORTER-venn-link-token-v1`) and proves knowledge of the token with
//! `HMAC-SHA256(token, role ‖ exporter)`: the listener first, then the
//! connector. The exporter is unique to this TLS session, so a proof cannot be
//! replayed on another session, and a man in the middle — who necessarily
//! runs two different TLS sessions — cannot produce either proof without the
//! token. Certificates are therefore ephemeral and self-signed: identity comes
//! from the token, not from a PKI (the node's gateway uses pinned CAs
//! instead). Proofs are compared in constant time.
//!
//! The listener proves first so that a party that merely connects to a fake
//! listener reveals nothing. A fake *connector* does receive the listener's
//! proof and could try to guess a weak token offline: tokens must be
//! high-entropy secrets (e.g. `openssl rand -hex 16`); docs/psi.md says so.
//!
//! With `--insecure` (plaintext, loopback tests only) the binding is a pair of
//! random nonces instead of the exporter: it still refuses a wrong token but
//! offers no confidentiality and no protection against an active attacker.

use hmac::{KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// TLS exporter label.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-venn-link-token-v1";

/// Which end of the link a proof comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The party that listened.
    Listener,
    /// The party that connected.
    Connector,
}

/// The proof that the `role` party knows `token`, for session binding `binding`.
pub fn proof(token: &[u8], role: Role, binding: &[u8]) -> [u8; 32] {
    let mut mac =
        <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(token).expect("HMAC takes any key length");
    mac.update(match role {
        Role::Listener => b"venn-link listener",
        Role::Connector => b"venn-link connector",
    });
    mac.update(binding);
    mac.finalize().into_bytes().into()
}

/// Checks a received proof in constant time.
pub fn verify(token: &[u8], role: Role, binding: &[u8], got: &[u8]) -> bool {
    let want = proof(token, role, binding);
    got.len() == want.len() && bool::from(want.ct_eq(got))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha256_known_answer() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?"
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let out = mac.finalize().into_bytes();
        let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn proofs_bind_role_token_and_session() {
        let p = proof(b"secret", Role::Listener, b"session-1");
        assert!(verify(b"secret", Role::Listener, b"session-1", &p));
        assert!(!verify(b"secret", Role::Connector, b"session-1", &p));
        assert!(!verify(b"secret", Role::Listener, b"session-2", &p));
        assert!(!verify(b"guess", Role::Listener, b"session-1", &p));
        assert!(!verify(b"secret", Role::Listener, b"session-1", &p[..31]));
    }
}
