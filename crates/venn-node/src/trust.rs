//! The node's keys and certificates, the API token, invitations and signatures.
//!
//! Layout in the data dir (`keys/` is 0700, every key file 0600):
//! - `keys/ca.key`, `keys/ca.crt` — the node CA (ECDSA P-256, CN `venn CA <domain>`). It signs
//!   only this node's own gateway identity; partners pin it.
//! - `keys/gateway.key`, `keys/gateway.crt` — the gateway's TLS identity, used as server *and*
//!   client certificate between nodes, and to sign grants. Subject CN = the domain ID and the
//!   domain ID is a DNS SAN, so a partner verifies the server name as the domain ID whatever
//!   the endpoint host is (IP addresses and NAT work). The certificate is re-issued by the CA at
//!   each start (the key stays), so an endpoint change needs no manual step.
//! - `token` — the API bearer token (32 random bytes, base64url), rotatable.
//!
//! Separate keys for CA, identity and token (Kuscia uses one RSA key for all three). Nothing
//! secret is ever logged; only fingerprints (SHA-256 of the CA certificate) are shown.
//!
//! Gateway client authentication is verified in two steps (see `gateway`): during the TLS
//! handshake [`DeferredClientVerifier`] checks only that the client holds the private key of the
//! certificate it presents; right after the handshake [`PeerSet::authenticate`] validates the
//! chain against *the CA pinned for the domain named in the certificate* with rustls'
//! `WebPkiClientVerifier`. Doing the chain check after the handshake lets the gateway answer
//! an unknown client with HTTP 401 (the documented reachability check) instead of a TLS alert,
//! while a certificate of domain X is only ever accepted if X's own pinned CA issued it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SigningKey,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::atomic::write_file;
use crate::config::Endpoint;
use crate::error::{NodeError, Result};

/// The crypto provider used everywhere (ring: small, no C toolchain beyond cc).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Hex SHA-256 of a DER certificate, the form in which CAs are pinned and shown.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// `n` random bytes from the OS.
pub fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut v = vec![0u8; n];
    getrandom::fill(&mut v).map_err(|e| NodeError::Crypto(format!("random: {e}")))?;
    Ok(v)
}

/// A random URL-safe identifier of `n` bytes of entropy.
pub fn random_id(n: usize) -> Result<String> {
    Ok(B64.encode(random_bytes(n)?))
}

/// Parses the first certificate of a PEM text.
pub fn cert_from_pem(pem: &str) -> Result<CertificateDer<'static>> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| NodeError::Invalid(format!("not a PEM certificate: {e}")))
}

/// PEM text of a DER certificate.
pub fn cert_to_pem(der: &[u8]) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The subject common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// The domain a venn CA certificate belongs to (CN `venn CA <domain>`), if it is one.
pub fn ca_domain(der: &[u8]) -> Option<String> {
    common_name(der)?
        .strip_prefix("venn CA ")
        .map(str::to_owned)
}

// === Node identity ===

/// This node's key material, loaded or created at start.
pub struct Identity {
    /// This node's domain ID.
    pub domain_id: String,
    /// The CA certificate (DER).
    pub ca_der: CertificateDer<'static>,
    /// Hex SHA-256 of the CA certificate.
    pub ca_fingerprint: String,
    /// `[gateway leaf, CA]`, as sent in TLS handshakes.
    pub chain: Vec<CertificateDer<'static>>,
    key_pem: String,
    signing: KeyPair,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("domain_id", &self.domain_id)
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish_non_exhaustive()
    }
}

fn read_or_create_key(path: &Path) -> Result<KeyPair> {
    match std::fs::read_to_string(path) {
        Ok(pem) => KeyPair::from_pem(&pem).map_err(|e| {
            NodeError::Crypto(format!("{}: not a usable private key: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = KeyPair::generate()?;
            write_file(path, key.serialize_pem().as_bytes(), true)?;
            Ok(key)
        }
        Err(e) => Err(NodeError::io(path, e)),
    }
}

impl Identity {
    /// Loads the keys from `<data_dir>/keys`, creating missing ones, and issues a fresh gateway
    /// certificate for `endpoint`. Refuses a data dir that belongs to another domain.
    pub fn load_or_create(data_dir: &Path, domain_id: &str, endpoint: &Endpoint) -> Result<Self> {
        let dir = data_dir.join("keys");
        std::fs::create_dir_all(&dir).map_err(|e| NodeError::io(&dir, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| NodeError::io(&dir, e))?;
        }
        let ca_key = read_or_create_key(&dir.join("ca.key"))?;
        let ca_path = dir.join("ca.crt");
        let ca_params = ca_params(domain_id)?;
        let ca_der = match std::fs::read_to_string(&ca_path) {
            Ok(pem) => {
                let der = cert_from_pem(&pem)?;
                let owner = ca_domain(&der).unwrap_or_default();
                if owner != domain_id {
                    return Err(NodeError::Config(vec![format!(
                        "domain_id: the data dir {} belongs to domain {owner:?}, not {domain_id:?}",
                        data_dir.display()
                    )]));
                }
                der
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let cert = ca_params.self_signed(&ca_key)?;
                write_file(&ca_path, cert.pem().as_bytes(), false)?;
                cert.der().clone()
            }
            Err(e) => return Err(NodeError::io(&ca_path, e)),
        };
        let issuer = Issuer::from_ca_cert_der(&ca_der, &ca_key)?;

        let gw_key = read_or_create_key(&dir.join("gateway.key"))?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, domain_id);
        let mut sans = vec![SanType::DnsName(domain_id.try_into()?)];
        match endpoint.host.parse::<std::net::IpAddr>() {
            Ok(ip) => sans.push(SanType::IpAddress(ip)),
            Err(_) if endpoint.host != domain_id => {
                sans.push(SanType::DnsName(endpoint.host.as_str().try_into()?))
            }
            Err(_) => {}
        }
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&gw_key, &issuer)?;
        write_file(&dir.join("gateway.crt"), leaf.pem().as_bytes(), false)?;

        Ok(Self {
            domain_id: domain_id.to_owned(),
            ca_fingerprint: fingerprint(&ca_der),
            chain: vec![leaf.der().clone(), ca_der.clone()],
            ca_der,
            key_pem: gw_key.serialize_pem(),
            signing: gw_key,
        })
    }

    /// The CA certificate as PEM.
    pub fn ca_pem(&self) -> String {
        cert_to_pem(&self.ca_der)
    }

    /// The gateway private key for rustls.
    pub fn tls_key(&self) -> Result<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| NodeError::Crypto(format!("gateway key: {e}")))
    }

    /// Signs `msg` with the gateway identity key (ECDSA P-256, SHA-256, ASN.1), base64url.
    pub fn sign(&self, msg: &[u8]) -> Result<String> {
        Ok(B64.encode(self.signing.sign(msg)?))
    }

    /// The gateway certificate (DER) that verifies [`Identity::sign`] signatures.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }
}

fn ca_params(domain_id: &str) -> Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name
        .push(DnType::CommonName, format!("venn CA {domain_id}"));
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

/// Verifies a [`Identity::sign`] signature with the public key of certificate `leaf`.
pub fn verify_signature(leaf: &[u8], msg: &[u8], sig_b64: &str) -> Result<()> {
    let sig = B64
        .decode(sig_b64)
        .map_err(|_| NodeError::Invalid("signature: not base64url".into()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| NodeError::Invalid(format!("signer certificate: {e}")))?;
    let key = cert.public_key().subject_public_key.data.as_ref();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, key)
        .verify(msg, &sig)
        .map_err(|_| NodeError::Invalid("signature: does not verify".into()))
}

// === API token ===

/// Creates the token file (0600) if it does not exist.
pub fn ensure_token(path: &Path) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    rotate_token(path)
}

/// Writes a new random token (atomically, 0600). The old token stops working at once: the node
/// re-reads the file when it changes.
pub fn rotate_token(path: &Path) -> Result<()> {
    let token = random_id(32)?;
    write_file(path, format!("{token}\n").as_bytes(), true)
}

/// Reads the token file.
pub fn read_token(path: &Path) -> Result<String> {
    let t = std::fs::read_to_string(path).map_err(|e| NodeError::io(path, e))?;
    Ok(t.trim().to_owned())
}

/// Checks presented API tokens against the token file, in constant time.
///
/// Only the SHA-256 of the token is kept in memory; presented tokens are hashed and compared
/// with `subtle`, so neither content nor length leaks through timing. The file is re-read when
/// its modification time or size changes (one `stat` per request), which is how
/// `venn token rotate` takes effect without restarting the node.
pub struct TokenCheck {
    path: std::path::PathBuf,
    cache: RwLock<Option<(SystemTime, u64, [u8; 32])>>,
}

impl TokenCheck {
    /// A checker for the token file at `path`.
    pub fn new(path: std::path::PathBuf) -> Self {
        Self {
            path,
            cache: RwLock::new(None),
        }
    }

    fn current(&self) -> Option<[u8; 32]> {
        let meta = std::fs::metadata(&self.path).ok()?;
        let stamp = (meta.modified().ok()?, meta.len());
        if let Some((m, l, d)) = *self.cache.read().ok()?
            && (m, l) == stamp
        {
            return Some(d);
        }
        let token = read_token(&self.path).ok()?;
        if token.is_empty() {
            return None;
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        *self.cache.write().ok()? = Some((stamp.0, stamp.1, digest));
        Some(digest)
    }

    /// Whether `presented` is the current token.
    pub fn check(&self, presented: &str) -> bool {
        let Some(expected) = self.current() else {
            return false;
        };
        let got: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        bool::from(got.ct_eq(&expected))
    }
}

// === Centralized network: lite certificates ===

/// Hex SHA-256 of a certificate's subject public key (the bits of the key, not the whole
/// SubjectPublicKeyInfo): the form in which a lite's registered key is pinned.
pub fn key_sha256(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(hex::encode(Sha256::digest(
        cert.public_key().subject_public_key.data.as_ref(),
    )))
}

/// Where a lite keeps the certificate the master issued and the network CA.
fn lite_paths(data_dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let dir = data_dir.join("keys");
    (
        dir.join("gateway.key"),
        dir.join("lite.crt"),
        dir.join("network-ca.crt"),
    )
}

fn ensure_keys_dir(data_dir: &Path) -> Result<()> {
    let dir = data_dir.join("keys");
    std::fs::create_dir_all(&dir).map_err(|e| NodeError::io(&dir, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| NodeError::io(&dir, e))?;
    }
    Ok(())
}

/// A certificate signing request for a lite's gateway key (created if missing): CN and the
/// only DNS SAN are the domain ID. Returns the CSR as PEM.
pub fn lite_csr(data_dir: &Path, domain_id: &str) -> Result<String> {
    ensure_keys_dir(data_dir)?;
    let key = read_or_create_key(&lite_paths(data_dir).0)?;
    let mut params = CertificateParams::new(vec![domain_id.to_owned()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, domain_id);
    Ok(params.serialize_request(&key)?.pem()?)
}

/// A certificate the master issued to a lite, checked before it is used.
pub struct IssuedCert {
    /// The lite's leaf certificate (PEM).
    pub cert_pem: String,
    /// Hex SHA-256 of the key it certifies ([`key_sha256`]).
    pub key_sha256: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("key_sha256", &self.key_sha256)
            .finish_non_exhaustive()
    }
}

/// Signs a lite's CSR with the network CA (the master's CA, key in `<data_dir>/keys/ca.key`).
///
/// The CSR's signature must verify and its subject CN and every SAN must name exactly
/// `domain_id` (anything else is refused, not silently dropped). The certificate is built
/// here, not copied from the request: CA:FALSE (no basic-constraints CA), key usage
/// digitalSignature only (no keyCertSign, no cRLSign), EKU serverAuth + clientAuth, CN and DNS
/// SAN = the domain ID.
pub fn sign_lite_csr(
    data_dir: &Path,
    ca_der: &CertificateDer<'static>,
    domain_id: &str,
    csr_pem: &str,
) -> Result<IssuedCert> {
    use rcgen::PublicKeyData as _;
    let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| NodeError::Invalid(format!("csr: {e}")))?;
    let cns: Vec<String> = csr
        .params
        .distinguished_name
        .iter()
        .filter(|(t, _)| **t == DnType::CommonName)
        .map(|(_, v)| match v {
            rcgen::DnValue::Utf8String(s) => s.clone(),
            rcgen::DnValue::PrintableString(s) => s.as_str().to_owned(),
            other => format!("{other:?}"),
        })
        .collect();
    if cns != [domain_id.to_owned()] {
        return Err(NodeError::Invalid(format!(
            "csr: the subject must be CN={domain_id}"
        )));
    }
    for san in &csr.params.subject_alt_names {
        match san {
            SanType::DnsName(n) if n.as_str() == domain_id => {}
            _ => {
                return Err(NodeError::Invalid(format!(
                    "csr: every subject alternative name must be the DNS name {domain_id}"
                )));
            }
        }
    }
    if !matches!(csr.params.is_ca, IsCa::NoCa | IsCa::ExplicitNoCa) {
        return Err(NodeError::Invalid("csr: asks for a CA certificate".into()));
    }
    let key_sha = hex::encode(Sha256::digest(csr.public_key.der_bytes()));
    let ca_key_path = data_dir.join("keys").join("ca.key");
    let ca_pem =
        std::fs::read_to_string(&ca_key_path).map_err(|e| NodeError::io(&ca_key_path, e))?;
    let ca_key = KeyPair::from_pem(&ca_pem)
        .map_err(|e| NodeError::Crypto(format!("network CA key: {e}")))?;
    let issuer = Issuer::from_ca_cert_der(ca_der, &ca_key)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, domain_id);
    params.subject_alt_names = vec![SanType::DnsName(domain_id.try_into()?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let signed = rcgen::CertificateSigningRequestParams {
        params,
        public_key: csr.public_key,
    }
    .signed_by(&issuer)?;
    Ok(IssuedCert {
        cert_pem: signed.pem(),
        key_sha256: key_sha,
    })
}

/// Checks and stores what the master answered to a registration: `cert_pem` must be issued by
/// the CA `ca_pem` (whose SHA-256 must be `ca_sha256`), name `domain_id` and certify this
/// lite's key. Written atomically.
pub fn save_lite_cert(
    data_dir: &Path,
    domain_id: &str,
    cert_pem: &str,
    ca_pem: &str,
    ca_sha256: &str,
) -> Result<()> {
    let (key_path, crt_path, ca_path) = lite_paths(data_dir);
    let ca = cert_from_pem(ca_pem)?;
    if !ct_eq_str(&fingerprint(&ca), &ca_sha256.to_ascii_lowercase()) {
        return Err(NodeError::Peer(
            "the master sent a CA that does not match the deploy token's fingerprint".into(),
        ));
    }
    let leaf = cert_from_pem(cert_pem)?;
    if !chain_names_domain(std::slice::from_ref(&leaf), &ca, domain_id) {
        return Err(NodeError::Peer(format!(
            "the master sent a certificate that is not valid for {domain_id} under the network CA"
        )));
    }
    let key_pem = std::fs::read_to_string(&key_path).map_err(|e| NodeError::io(&key_path, e))?;
    let key = KeyPair::from_pem(&key_pem)
        .map_err(|e| NodeError::Crypto(format!("{}: {e}", key_path.display())))?;
    {
        use rcgen::PublicKeyData as _;
        let mine = hex::encode(Sha256::digest(key.der_bytes()));
        if key_sha256(&leaf).as_deref() != Some(mine.as_str()) {
            return Err(NodeError::Peer(
                "the master sent a certificate for another key".into(),
            ));
        }
    }
    write_file(&ca_path, cert_to_pem(&ca).as_bytes(), false)?;
    write_file(&crt_path, cert_to_pem(&leaf).as_bytes(), false)?;
    Ok(())
}

/// Forgets a lite's master-issued certificate (the key stays).
pub fn forget_lite_cert(data_dir: &Path) -> Result<()> {
    let (_, crt, _) = lite_paths(data_dir);
    match std::fs::remove_file(&crt) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NodeError::io(&crt, e)),
    }
}

impl Identity {
    /// A lite's identity: its gateway key and the certificate the master issued, with the
    /// network CA as `ca_der`. `None` when the lite is not registered yet.
    pub fn load_lite(data_dir: &Path, domain_id: &str) -> Result<Option<Self>> {
        let (key_path, crt_path, ca_path) = lite_paths(data_dir);
        let (Ok(crt), Ok(ca)) = (
            std::fs::read_to_string(&crt_path),
            std::fs::read_to_string(&ca_path),
        ) else {
            return Ok(None);
        };
        let key_pem =
            std::fs::read_to_string(&key_path).map_err(|e| NodeError::io(&key_path, e))?;
        let signing = KeyPair::from_pem(&key_pem)
            .map_err(|e| NodeError::Crypto(format!("{}: {e}", key_path.display())))?;
        let leaf = cert_from_pem(&crt)?;
        let ca_der = cert_from_pem(&ca)?;
        if !chain_names_domain(std::slice::from_ref(&leaf), &ca_der, domain_id) {
            return Err(NodeError::Config(vec![format!(
                "domain_id: {} is not a certificate for {domain_id:?} (another domain's data dir?)",
                crt_path.display()
            )]));
        }
        Ok(Some(Self {
            domain_id: domain_id.to_owned(),
            ca_fingerprint: fingerprint(&ca_der),
            chain: vec![leaf, ca_der.clone()],
            ca_der,
            key_pem,
            signing,
        }))
    }
}

// === Partners ===

/// One pinned partner: its domain ID and CA.
#[derive(Clone)]
pub struct Partner {
    /// The partner's domain ID.
    pub domain_id: String,
    /// The partner's CA (DER).
    pub ca_der: CertificateDer<'static>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    /// rustls client config for connecting to this partner (pinned CA, our identity).
    pub client_config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Partner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partner")
            .field("domain_id", &self.domain_id)
            .finish_non_exhaustive()
    }
}

fn roots_of(ca: &CertificateDer<'static>) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.clone())
        .map_err(|e| NodeError::Invalid(format!("ca certificate: {e}")))?;
    Ok(roots)
}

/// Builds a client verifier that accepts only leaves issued by `ca`.
pub fn client_verifier_for(ca: &CertificateDer<'static>) -> Result<Arc<dyn ClientCertVerifier>> {
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots_of(ca)?), provider())
        .build()
        .map_err(|e| NodeError::Crypto(format!("client verifier: {e}")))
}

/// Whether certificate chain `certs` is issued by `ca` and names domain `domain_id` (CN).
pub fn chain_names_domain(
    certs: &[CertificateDer<'static>],
    ca: &CertificateDer<'static>,
    domain_id: &str,
) -> bool {
    let Some(leaf) = certs.first() else {
        return false;
    };
    if common_name(leaf).as_deref() != Some(domain_id) {
        return false;
    }
    let Ok(v) = client_verifier_for(ca) else {
        return false;
    };
    v.verify_client_cert(leaf, &certs[1..], UnixTime::now())
        .is_ok()
}

/// The pinned partners, shared by the gateway server and client; replaced on onboarding.
///
/// In a centralized network every domain's certificate is issued by the one network CA (the
/// master's), so a domain can additionally be pinned to one key ([`PeerSet::pin_key`]): the
/// master pins each lite to the key it registered, lites pin each other to the keys the master
/// announces, and `venn domain reset` (a lost or stolen key) therefore locks the old key out
/// although its certificate still chains to the network CA.
#[derive(Default)]
pub struct PeerSet {
    inner: RwLock<HashMap<String, Partner>>,
    keys: RwLock<HashMap<String, String>>,
}

impl PeerSet {
    /// Adds or replaces a partner.
    pub fn insert(
        &self,
        identity: &Identity,
        domain_id: &str,
        ca_der: CertificateDer<'static>,
    ) -> Result<()> {
        let client_verifier = client_verifier_for(&ca_der)?;
        let client_config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots_of(&ca_der)?)
            .with_client_auth_cert(identity.chain.clone(), identity.tls_key()?)?;
        let p = Partner {
            domain_id: domain_id.to_owned(),
            ca_der,
            client_verifier,
            client_config: Arc::new(client_config),
        };
        self.inner
            .write()
            .map_err(|_| NodeError::Crypto("peer set poisoned".into()))?
            .insert(domain_id.to_owned(), p);
        Ok(())
    }

    /// Removes a partner (and its key pin).
    pub fn remove(&self, domain_id: &str) {
        if let Ok(mut m) = self.inner.write() {
            m.remove(domain_id);
        }
        self.unpin_key(domain_id);
    }

    /// Accepts only the key with hex SHA-256 `key_sha256` (see [`key_sha256`]) for `domain_id`.
    pub fn pin_key(&self, domain_id: &str, key_sha256: &str) {
        if let Ok(mut m) = self.keys.write() {
            m.insert(domain_id.to_owned(), key_sha256.to_ascii_lowercase());
        }
    }

    /// Forgets the key pin of `domain_id` (any key its pinned CA certifies is accepted again).
    pub fn unpin_key(&self, domain_id: &str) {
        if let Ok(mut m) = self.keys.write() {
            m.remove(domain_id);
        }
    }

    /// Whether leaf `der` carries the key pinned for `domain_id` (true when none is pinned).
    fn key_allowed(&self, domain_id: &str, der: &[u8]) -> bool {
        let Ok(keys) = self.keys.read() else {
            return false;
        };
        match keys.get(domain_id) {
            None => true,
            Some(pin) => key_sha256(der).is_some_and(|k| ct_eq_str(&k, pin)),
        }
    }

    /// A partner by domain ID.
    pub fn get(&self, domain_id: &str) -> Option<Partner> {
        self.inner.read().ok()?.get(domain_id).cloned()
    }

    /// The domain ID of a client whose chain is valid under the CA pinned for the domain its
    /// certificate names; `None` (→ HTTP 401) otherwise.
    pub fn authenticate(&self, certs: &[CertificateDer<'static>]) -> Option<String> {
        let leaf = certs.first()?;
        let domain = common_name(leaf)?;
        let partner = self.get(&domain)?;
        partner
            .client_verifier
            .verify_client_cert(leaf, &certs[1..], UnixTime::now())
            .ok()?;
        self.key_allowed(&domain, leaf).then_some(domain)
    }
}

// === TLS verifiers ===

/// Server-side client verifier that proves key possession during the handshake and defers
/// chain validation to [`PeerSet::authenticate`] (see the module docs for why).
#[derive(Debug)]
pub struct DeferredClientVerifier {
    provider: Arc<CryptoProvider>,
}

impl DeferredClientVerifier {
    /// A new verifier.
    pub fn new() -> Self {
        Self {
            provider: provider(),
        }
    }
}

impl Default for DeferredClientVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientCertVerifier for DeferredClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        // Chain validation happens after the handshake (PeerSet::authenticate); the signature
        // checks below still prove that the client holds the certificate's private key.
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Client-side server verifier for joining with an invitation: the server must send a CA
/// certificate whose SHA-256 is the pinned fingerprint, and its leaf must be valid under that
/// CA for the expected domain ID.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl PinnedCaVerifier {
    /// Pins the CA with hex SHA-256 `fingerprint`.
    pub fn new(fingerprint: &str) -> Self {
        Self {
            fingerprint: fingerprint.to_ascii_lowercase(),
            provider: provider(),
        }
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| bool::from(fingerprint(c).as_bytes().ct_eq(self.fingerprint.as_bytes())))
            .ok_or_else(|| {
                rustls::Error::General(
                    "the partner's CA does not match the invitation's fingerprint".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        v.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

// === Invitations ===

/// A one-time invitation, printed by `venn peer invite` and consumed by `venn peer join`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Invitation {
    /// Format version (1).
    pub v: u8,
    /// The inviting domain.
    pub domain: String,
    /// The inviting node's gateway endpoint.
    pub endpoint: String,
    /// Hex SHA-256 of the inviting node's CA certificate.
    pub ca_sha256: String,
    /// The domain that is invited.
    pub peer: String,
    /// Invitation ID (public).
    pub id: String,
    /// The one-time secret.
    pub secret: String,
    /// Expiry, seconds since the Unix epoch.
    pub expires: i64,
}

const INVITATION_PREFIX: &str = "venn-invite-";

impl Invitation {
    /// The invitation as one copy-pasteable word.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{INVITATION_PREFIX}{}", B64.encode(json))
    }

    /// Parses [`Invitation::encode`] output.
    pub fn decode(s: &str) -> Result<Self> {
        let body = s.trim().strip_prefix(INVITATION_PREFIX).ok_or_else(|| {
            NodeError::Invalid(format!("invitation: must start with {INVITATION_PREFIX}"))
        })?;
        let json = B64
            .decode(body)
            .map_err(|_| NodeError::Invalid("invitation: damaged (not base64url)".into()))?;
        serde_json::from_slice(&json)
            .map_err(|e| NodeError::Invalid(format!("invitation: damaged ({e})")))
    }
}

// === Deploy tokens ===

/// A lite's deploy token, printed once by `venn domain add|token|reset` on the master and
/// given to `venn init --mode lite --deploy-token`.
///
/// Like an invitation it is one copy-pasteable word that carries the SHA-256 of the master's
/// (network) CA, so the lite pins the master on first contact (no trust on first use); the
/// master keeps only the SHA-256 of `secret`. 32 random bytes of secret (256 bits).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeployToken {
    /// Format version (1).
    pub v: u8,
    /// The master's domain.
    pub master: String,
    /// Hex SHA-256 of the master's CA certificate (the network CA).
    pub ca_sha256: String,
    /// The domain this token registers.
    pub domain: String,
    /// Token ID (public).
    pub id: String,
    /// The one-time secret.
    pub secret: String,
    /// Expiry, seconds since the Unix epoch.
    pub expires: i64,
}

impl std::fmt::Debug for DeployToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeployToken")
            .field("master", &self.master)
            .field("domain", &self.domain)
            .field("id", &self.id)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

const DEPLOY_TOKEN_PREFIX: &str = "venn-deploy-";

impl DeployToken {
    /// The token as one word.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{DEPLOY_TOKEN_PREFIX}{}", B64.encode(json))
    }

    /// Parses [`DeployToken::encode`] output.
    pub fn decode(s: &str) -> Result<Self> {
        let body = s.trim().strip_prefix(DEPLOY_TOKEN_PREFIX).ok_or_else(|| {
            NodeError::Invalid(format!(
                "deploy token: must start with {DEPLOY_TOKEN_PREFIX}"
            ))
        })?;
        let json = B64
            .decode(body)
            .map_err(|_| NodeError::Invalid("deploy token: damaged (not base64url)".into()))?;
        serde_json::from_slice(&json)
            .map_err(|_| NodeError::Invalid("deploy token: damaged".into()))
    }
}

/// Hex SHA-256 of an invitation secret (only the hash is stored).
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Constant-time equality of two strings.
pub fn ct_eq_str(a: &str, b: &str) -> bool {
    let da: [u8; 32] = Sha256::digest(a.as_bytes()).into();
    let db: [u8; 32] = Sha256::digest(b.as_bytes()).into();
    bool::from(da.ct_eq(&db))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> Endpoint {
        Endpoint::parse("https://127.0.0.1:1080").unwrap()
    }

    #[test]
    fn identity_and_peer_auth() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let alice = Identity::load_or_create(a.path(), "alice", &ep()).unwrap();
        let bob = Identity::load_or_create(b.path(), "bob", &ep()).unwrap();
        // reload keeps the CA
        let again = Identity::load_or_create(a.path(), "alice", &ep()).unwrap();
        assert_eq!(again.ca_fingerprint, alice.ca_fingerprint);
        // another domain refused on the same data dir
        assert!(Identity::load_or_create(a.path(), "carol", &ep()).is_err());

        let peers = PeerSet::default();
        assert_eq!(peers.authenticate(&bob.chain), None);
        peers.insert(&alice, "bob", bob.ca_der.clone()).unwrap();
        assert_eq!(peers.authenticate(&bob.chain).as_deref(), Some("bob"));
        // alice's own cert is not accepted as bob's
        assert_eq!(peers.authenticate(&alice.chain), None);
        // a cert claiming "bob" issued by alice's CA is refused
        peers.insert(&bob, "alice", alice.ca_der.clone()).unwrap();
        assert!(chain_names_domain(&bob.chain, &bob.ca_der, "bob"));
        assert!(!chain_names_domain(&bob.chain, &alice.ca_der, "bob"));
    }

    #[test]
    fn signatures() {
        let a = tempfile::tempdir().unwrap();
        let alice = Identity::load_or_create(a.path(), "alice", &ep()).unwrap();
        let sig = alice.sign(b"grant").unwrap();
        verify_signature(alice.leaf(), b"grant", &sig).unwrap();
        assert!(verify_signature(alice.leaf(), b"grunt", &sig).is_err());
    }

    #[test]
    fn token_check_and_rotation() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("token");
        ensure_token(&p).unwrap();
        let t1 = read_token(&p).unwrap();
        let check = TokenCheck::new(p.clone());
        assert!(check.check(&t1));
        assert!(!check.check("nope"));
        std::thread::sleep(std::time::Duration::from_millis(20));
        rotate_token(&p).unwrap();
        let t2 = read_token(&p).unwrap();
        assert!(check.check(&t2));
        assert!(!check.check(&t1));
    }

    #[test]
    fn invitation_roundtrip() {
        let inv = Invitation {
            v: 1,
            domain: "alice".into(),
            endpoint: "https://a:1080".into(),
            ca_sha256: "00".into(),
            peer: "bob".into(),
            id: "x".into(),
            secret: "s".into(),
            expires: 1,
        };
        assert_eq!(Invitation::decode(&inv.encode()).unwrap(), inv);
        assert!(Invitation::decode("venn-invite-!!").is_err());
    }
}
