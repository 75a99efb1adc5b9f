//! Test certificates made with rcgen at test time (nothing is checked in).

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, RsaKeySize,
};

/// A PEM certificate and its PEM private key.
#[derive(Debug, Clone)]
pub struct Pem {
    /// `-----BEGIN CERTIFICATE-----` ...
    pub cert: String,
    /// `-----BEGIN PRIVATE KEY-----` ... (PKCS#8)
    pub key: String,
}

/// Which key algorithm a certificate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// ECDSA P-256.
    Ecdsa,
    /// RSA 2048.
    Rsa,
}

/// A certificate authority that can issue leaves.
pub struct Ca {
    /// The CA's own certificate and key.
    pub pem: Pem,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("cert", &self.pem.cert).finish()
    }
}

/// Now plus `days` (negative: past).
fn offset(days: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(days)
}

fn key(algorithm: Algorithm) -> Result<KeyPair> {
    Ok(match algorithm {
        Algorithm::Ecdsa => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?,
        Algorithm::Rsa => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048)?,
    })
}

fn params(cn: &str, sans: &[&str], from_days: i64, to_days: i64) -> Result<CertificateParams> {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.not_before = offset(from_days);
    params.not_after = offset(to_days);
    Ok(params)
}

impl Ca {
    /// A CA valid from yesterday for a year.
    pub fn new(cn: &str) -> Result<Ca> {
        Self::valid(cn, -1, 365)
    }

    /// A CA valid between `from_days` and `to_days` relative to today (negative: past).
    pub fn valid(cn: &str, from_days: i64, to_days: i64) -> Result<Ca> {
        Self::issue(cn, from_days, to_days, None)
    }

    /// An intermediate CA named `cn` issued by this CA, valid from yesterday for a year. Its
    /// leaves carry only their own certificate; a client sends the intermediate beside.
    pub fn intermediate(&self, cn: &str) -> Result<Ca> {
        Self::issue(cn, -1, 365, Some(&self.issuer))
    }

    /// A CA certificate signed by `issuer`, or self-signed.
    fn issue(
        cn: &str,
        from_days: i64,
        to_days: i64,
        issuer: Option<&Issuer<'static, KeyPair>>,
    ) -> Result<Ca> {
        let key = key(Algorithm::Ecdsa)?;
        let mut params = params(cn, &[], from_days, to_days)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = match issuer {
            Some(issuer) => params.signed_by(&key, issuer)?,
            None => params.self_signed(&key)?,
        };
        let pem = Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Ok(Ca {
            pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// A leaf for `sans` (the first is also the CN), valid from yesterday for `days`.
    pub fn leaf(&self, sans: &[&str], algorithm: Algorithm, days: i64) -> Result<Pem> {
        self.leaf_valid(sans, algorithm, -1, days)
    }

    /// A leaf for `sans` (the first is also the CN), valid between `from_days` and `to_days`
    /// relative to today (negative: past; both negative gives an expired leaf).
    pub fn leaf_valid(
        &self,
        sans: &[&str],
        algorithm: Algorithm,
        from_days: i64,
        to_days: i64,
    ) -> Result<Pem> {
        let key = key(algorithm)?;
        let params = params(
            sans.first().copied().unwrap_or("leaf"),
            sans,
            from_days,
            to_days,
        )?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

impl Ca {
    /// A leaf for `sans` (the first is also the CN) with serial `serial` whose certificate
    /// names `crl_url` as its CRL distribution point; valid from yesterday for 30 days.
    pub fn leaf_with_crl(&self, sans: &[&str], serial: u64, crl_url: &str) -> Result<Pem> {
        let key = key(Algorithm::Ecdsa)?;
        let mut params = params(sans.first().copied().unwrap_or("leaf"), sans, -1, 30)?;
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: vec![crl_url.to_owned()],
        }];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// A CRL (DER) of this CA revoking `serials`, current for an hour.
    pub fn crl(&self, serials: &[u64]) -> Result<Vec<u8>> {
        let now = time::OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(5),
            next_update: now + time::Duration::hours(1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*serial),
                    revocation_time: now - time::Duration::minutes(1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.der().to_vec())
    }
}

/// A self-signed leaf (not a CA) for `sans`, valid from yesterday for `days`.
pub fn self_signed(sans: &[&str], algorithm: Algorithm, days: i64) -> Result<Pem> {
    let key = key(algorithm)?;
    let params = params(sans.first().copied().unwrap_or("leaf"), sans, -1, days)?;
    let cert = params.self_signed(&key)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}
