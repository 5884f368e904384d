//! The X.509 side: a self-signed P-256 CA for the trust domain and X.509-SVIDs it signs.
//!
//! Leaf certificates follow the X509-SVID specification as SPIRE issues them: exactly one URI
//! SAN (the SPIFFE ID), optional DNS SANs, `CA:FALSE`, key usage digitalSignature +
//! keyEncipherment + keyAgreement, extended key usage serverAuth + clientAuth. The CA carries the
//! trust domain's SPIFFE ID as its URI SAN.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::ids::TrustDomain;
use crate::secret::SecretString;

/// Lifetime of a generated CA.
pub const CA_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Leaf certificates start this much in the past, to tolerate clock skew.
const BACKDATE: Duration = Duration::from_secs(10);

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum X509Error {
    /// Key generation failed.
    #[error("failed to generate a P-256 key")]
    GenerateKey(#[source] rcgen::Error),
    /// Certificate signing failed.
    #[error("failed to sign the certificate for {subject}")]
    Sign {
        /// The SPIFFE ID being certified.
        subject: String,
        /// The rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// A name is not valid in a certificate (non-ASCII).
    #[error("{name:?} cannot be put in a certificate")]
    BadName {
        /// The rejected name.
        name: String,
    },
    /// A time is out of range.
    #[error("certificate validity is out of range")]
    Time,
    /// The stored CA cannot be decoded.
    #[error("the stored CA key or certificate is invalid")]
    BadStoredCa,
}

/// A freshly issued X.509-SVID.
#[derive(Debug)]
pub struct LeafSvid {
    /// DER leaf certificate.
    pub cert_der: Vec<u8>,
    /// DER PKCS#8 private key.
    pub key_pkcs8: Zeroizing<Vec<u8>>,
    /// `notAfter`, seconds since the epoch.
    pub not_after: i64,
    /// When it was issued, seconds since the epoch.
    pub issued_at: i64,
}

impl LeafSvid {
    /// When SPIRE agents rotate an SVID: half-way through its life.
    #[must_use]
    pub fn refresh_at(&self) -> i64 {
        self.issued_at + (self.not_after - self.issued_at) / 2
    }
}

/// Stored form of the CA.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredCa {
    key_pkcs8: SecretString,
    cert_der: String,
    not_after: i64,
}

/// The trust domain's X.509 CA.
#[derive(Debug)]
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_der: Vec<u8>,
    not_after: i64,
}

/// The CA's subject and key identifier method: identical on every start, so a restored key
/// signs leaves that chain to the stored certificate.
fn ca_params(td: &TrustDomain) -> Result<CertificateParams, X509Error> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "US");
    dn.push(DnType::OrganizationName, "devspire");
    dn.push(DnType::CommonName, format!("devspire CA {td}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.subject_alt_names = vec![uri_san(&td.id())?];
    Ok(params)
}

fn uri_san(uri: &str) -> Result<SanType, X509Error> {
    uri.try_into()
        .map(SanType::URI)
        .map_err(|_| X509Error::BadName {
            name: uri.to_owned(),
        })
}

fn datetime(unix: i64) -> Result<OffsetDateTime, X509Error> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(|_| X509Error::Time)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Keep it positive and non-zero-led as DER INTEGER requires.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

impl CertificateAuthority {
    /// Generates a new self-signed CA valid for [`CA_TTL`].
    ///
    /// # Errors
    ///
    /// An [`X509Error`] when key generation or signing fails.
    pub fn generate(td: &TrustDomain, now: i64) -> Result<Self, X509Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(X509Error::GenerateKey)?;
        let mut params = ca_params(td)?;
        params.not_before = datetime(now - secs(BACKDATE))?;
        let not_after = now + secs(CA_TTL);
        params.not_after = datetime(not_after)?;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(|source| X509Error::Sign {
            subject: td.id(),
            source,
        })?;
        Ok(Self {
            cert_der: cert.der().to_vec(),
            issuer: Issuer::new(ca_params(td)?, key),
            not_after,
        })
    }

    /// Restores a stored CA.
    ///
    /// # Errors
    ///
    /// [`X509Error::BadStoredCa`] when the key or certificate does not decode.
    pub fn from_stored(td: &TrustDomain, stored: &StoredCa) -> Result<Self, X509Error> {
        let der = Zeroizing::new(
            B64.decode(stored.key_pkcs8.expose())
                .map_err(|_| X509Error::BadStoredCa)?,
        );
        let key = KeyPair::try_from(der.as_slice()).map_err(|_| X509Error::BadStoredCa)?;
        let cert_der = B64
            .decode(&stored.cert_der)
            .map_err(|_| X509Error::BadStoredCa)?;
        Ok(Self {
            issuer: Issuer::new(ca_params(td)?, key),
            cert_der,
            not_after: stored.not_after,
        })
    }

    /// The stored form.
    #[must_use]
    pub fn to_stored(&self) -> StoredCa {
        StoredCa {
            key_pkcs8: SecretString::new(B64.encode(self.issuer.key().serialized_der())),
            cert_der: B64.encode(&self.cert_der),
            not_after: self.not_after,
        }
    }

    /// The CA certificate (DER): the trust domain's X.509 bundle.
    #[must_use]
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Issues an X.509-SVID for `spiffe_id` valid for `ttl` (capped at the CA's expiry).
    ///
    /// # Errors
    ///
    /// An [`X509Error`] when a name is invalid or signing fails.
    pub fn issue(
        &self,
        spiffe_id: &str,
        dns_names: &[String],
        ttl: Duration,
        now: i64,
    ) -> Result<LeafSvid, X509Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(X509Error::GenerateKey)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "US");
        dn.push(DnType::OrganizationName, "devspire");
        if let Some(first) = dns_names.first() {
            dn.push(DnType::CommonName, first.clone());
        }
        params.distinguished_name = dn;
        let mut sans = vec![uri_san(spiffe_id)?];
        for name in dns_names {
            sans.push(SanType::DnsName(
                name.as_str()
                    .try_into()
                    .map_err(|_| X509Error::BadName { name: name.clone() })?,
            ));
        }
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = datetime(now - secs(BACKDATE))?;
        let not_after = (now.saturating_add(secs(ttl))).min(self.not_after);
        params.not_after = datetime(not_after)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| X509Error::Sign {
                subject: spiffe_id.to_owned(),
                source,
            })?;
        Ok(LeafSvid {
            cert_der: cert.der().to_vec(),
            key_pkcs8: Zeroizing::new(key.serialize_der()),
            not_after,
            issued_at: now,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_svid_parses_with_the_spiffe_crate() {
        let td: TrustDomain = "hpcs.test".parse().unwrap();
        let ca = CertificateAuthority::generate(&td, 1_700_000_000).unwrap();
        let leaf = ca
            .issue(
                "spiffe://hpcs.test/hpcs/server",
                &["localhost".into()],
                Duration::from_secs(3600),
                1_700_000_000,
            )
            .unwrap();
        assert_eq!(leaf.not_after, 1_700_003_600);
        assert_eq!(leaf.refresh_at(), 1_700_001_800);
        let svid = spiffe::X509Svid::parse_from_der(&leaf.cert_der, &leaf.key_pkcs8).unwrap();
        assert_eq!(
            svid.spiffe_id().to_string(),
            "spiffe://hpcs.test/hpcs/server"
        );
        let bundle = spiffe::X509Bundle::parse_from_der(
            spiffe::TrustDomain::new("hpcs.test").unwrap(),
            ca.cert_der(),
        )
        .unwrap();
        assert_eq!(bundle.authorities().len(), 1);

        // A restored CA signs leaves under the same subject and key.
        let stored = serde_json::to_string(&ca.to_stored()).unwrap();
        let restored =
            CertificateAuthority::from_stored(&td, &serde_json::from_str(&stored).unwrap())
                .unwrap();
        assert_eq!(restored.cert_der(), ca.cert_der());
        let leaf2 = restored
            .issue(
                "spiffe://hpcs.test/a",
                &[],
                Duration::from_secs(60),
                1_700_000_000,
            )
            .unwrap();
        spiffe::X509Svid::parse_from_der(&leaf2.cert_der, &leaf2.key_pkcs8).unwrap();
    }
}
