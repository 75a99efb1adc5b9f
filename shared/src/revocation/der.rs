//! A minimal DER reader and writer for the structures handled by hand: the signed-data envelope
//! (CRL, certificate, BasicOCSPResponse), SubjectPublicKeyInfo, OCSP requests and responses,
//! and GeneralizedTime.
//!
//! Input is untrusted (it comes from CRL and OCSP servers): every read checks lengths, nothing
//! panics, and the only error is [`DerError`] naming what was expected.

use std::fmt;

pub const INTEGER: u8 = 0x02;
pub const BIT_STRING: u8 = 0x03;
pub const OCTET_STRING: u8 = 0x04;
pub const OID: u8 = 0x06;
pub const ENUMERATED: u8 = 0x0a;
pub const GENERALIZED_TIME: u8 = 0x18;
pub const SEQUENCE: u8 = 0x30;

/// Malformed DER: what was expected where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerError(pub &'static str);

/// Reads TLVs one after the other from a byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    data: &'a [u8],
}

/// One tag-length-value element.
#[derive(Debug, Clone, Copy)]
pub struct Tlv<'a> {
    pub tag: u8,
    /// The value octets.
    pub contents: &'a [u8],
    /// The whole element: tag, length and value.
    pub raw: &'a [u8],
}

/// A signed structure (`SEQUENCE { tbs, signatureAlgorithm, signature BIT STRING, ... }`).
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    /// The whole to-be-signed element (what the signature covers).
    pub tbs: &'a [u8],
    /// The contents of the signature AlgorithmIdentifier (no outer tag), as rustls compares them.
    pub algorithm: &'a [u8],
    /// The signature octets.
    pub signature: &'a [u8],
}

// === impl DerError ===

impl fmt::Display for DerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed DER ({})", self.0)
    }
}

impl From<DerError> for String {
    fn from(error: DerError) -> Self {
        error.to_string()
    }
}

// === impl Reader ===

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn peek_tag(&self) -> Option<u8> {
        self.data.first().copied()
    }

    /// Reads the next element, whatever its tag.
    pub fn read_any(&mut self) -> Result<Tlv<'a>, DerError> {
        let data = self.data;
        let (&tag, rest) = data.split_first().ok_or(DerError("unexpected end"))?;
        if tag & 0x1f == 0x1f {
            return Err(DerError("high tag number"));
        }
        let (&first, rest) = rest.split_first().ok_or(DerError("missing length"))?;
        let (len, rest) = match first {
            0..=0x7f => (usize::from(first), rest),
            0x81..=0x84 => {
                let n = usize::from(first & 0x7f);
                if rest.len() < n {
                    return Err(DerError("truncated length"));
                }
                let (bytes, rest) = rest.split_at(n);
                let len = bytes
                    .iter()
                    .fold(0usize, |len, &b| (len << 8) | usize::from(b));
                (len, rest)
            }
            _ => return Err(DerError("unsupported length form")),
        };
        if rest.len() < len {
            return Err(DerError("truncated value"));
        }
        let header = data.len() - rest.len();
        let (contents, rest) = rest.split_at(len);
        self.data = rest;
        Ok(Tlv {
            tag,
            contents,
            raw: &data[..header + len],
        })
    }

    /// Reads the next element, which must carry `tag`.
    pub fn read_tlv(&mut self, tag: u8, what: &'static str) -> Result<Tlv<'a>, DerError> {
        match self.peek_tag() {
            Some(t) if t == tag => self.read_any(),
            _ => Err(DerError(what)),
        }
    }

    /// Reads the value octets of the next element, which must carry `tag`.
    pub fn read(&mut self, tag: u8, what: &'static str) -> Result<&'a [u8], DerError> {
        self.read_tlv(tag, what).map(|tlv| tlv.contents)
    }

    /// Reads the value octets of the next element if it carries `tag`.
    pub fn read_optional(&mut self, tag: u8) -> Result<Option<&'a [u8]>, DerError> {
        match self.peek_tag() {
            Some(t) if t == tag => self.read_any().map(|tlv| Some(tlv.contents)),
            _ => Ok(None),
        }
    }

    /// Fails unless everything was read.
    pub fn finish(&self, what: &'static str) -> Result<(), DerError> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(DerError(what))
        }
    }
}

// === impl Signed ===

impl<'a> Signed<'a> {
    /// Reads `tbs, signatureAlgorithm, signature` from the contents of the outer SEQUENCE;
    /// `reader` is left on what follows (the certificates of a BasicOCSPResponse).
    pub fn read(reader: &mut Reader<'a>) -> Result<Self, DerError> {
        let tbs = reader.read_tlv(SEQUENCE, "to-be-signed data")?.raw;
        let algorithm = reader.read(SEQUENCE, "signature algorithm")?;
        let signature = bit_string(reader.read(BIT_STRING, "signature")?)?;
        Ok(Self {
            tbs,
            algorithm,
            signature,
        })
    }

    /// Parses a whole signed structure with nothing after the signature (CRL, certificate).
    pub fn parse(der: &'a [u8]) -> Result<Self, DerError> {
        let mut outer = Reader::new(der);
        let contents = outer.read(SEQUENCE, "signed structure")?;
        outer.finish("data after the signed structure")?;
        let mut reader = Reader::new(contents);
        let signed = Self::read(&mut reader)?;
        reader.finish("data after the signature")?;
        Ok(signed)
    }
}

/// The octets of a BIT STRING without unused bits.
pub fn bit_string(contents: &[u8]) -> Result<&[u8], DerError> {
    match contents.split_first() {
        Some((0, bits)) => Ok(bits),
        _ => Err(DerError("bit string with unused bits")),
    }
}

/// A SubjectPublicKeyInfo: the contents of its AlgorithmIdentifier and the key octets.
pub fn spki(der: &[u8]) -> Result<(&[u8], &[u8]), DerError> {
    let mut outer = Reader::new(der);
    let mut reader = Reader::new(outer.read(SEQUENCE, "SubjectPublicKeyInfo")?);
    let algorithm = reader.read(SEQUENCE, "public key algorithm")?;
    let key = bit_string(reader.read(BIT_STRING, "public key")?)?;
    Ok((algorithm, key))
}

/// A GeneralizedTime (`YYYYMMDDHHMMSS[.f]Z`) as Unix seconds (fractions dropped).
pub fn generalized_time(contents: &[u8]) -> Result<i64, DerError> {
    const BAD: DerError = DerError("GeneralizedTime");
    let (digits, rest) = contents.split_at_checked(14).ok_or(BAD)?;
    let fraction_ok = match rest.split_last() {
        Some((b'Z', [])) => true,
        Some((b'Z', [b'.', fraction @ ..])) => {
            !fraction.is_empty() && fraction.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    };
    if !fraction_ok || !digits.iter().all(u8::is_ascii_digit) {
        return Err(BAD);
    }
    let number = |range: std::ops::Range<usize>| {
        digits[range]
            .iter()
            .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'))
    };
    let (year, month, day) = (number(0..4), number(4..6), number(6..8));
    let (hour, minute, second) = (number(8..10), number(10..12), number(12..14));
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(BAD);
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// `2026-11-22T10:00:00Z` for Unix seconds (operator-facing messages).
pub fn format_time(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Encodes one element (definite length).
pub fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
    let len = contents.len();
    let mut out = Vec::with_capacity(len + 6);
    out.push(tag);
    if len < 0x80 {
        // Invariant: len < 0x80 fits the short form.
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        // Invariant: at most size_of::<usize>() (8) length octets.
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(contents);
    out
}

/// Encodes a SEQUENCE of already encoded elements.
pub fn sequence(elements: &[&[u8]]) -> Vec<u8> {
    tlv(SEQUENCE, &elements.concat())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_short_and_long_lengths() {
        let long = tlv(OCTET_STRING, &[7; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let short = tlv(INTEGER, &[1]);
        let data = [short.as_slice(), long.as_slice()].concat();
        let mut reader = Reader::new(&data);
        assert_eq!(reader.read(INTEGER, "int").unwrap(), &[1]);
        let tlv = reader.read_any().unwrap();
        assert_eq!(
            (tlv.tag, tlv.contents.len(), tlv.raw.len()),
            (0x04, 300, 304)
        );
        assert!(reader.is_empty());
    }

    #[test]
    fn rejects_truncated_and_odd_encodings() {
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x05, 0x01],
            &[0x30, 0x82, 0x01],
            &[0x30, 0x80, 0x00, 0x00],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x1f, 0x01, 0x00],
        ] {
            assert!(Reader::new(bad).read_any().is_err(), "{bad:?}");
        }
        assert_eq!(
            Reader::new(&[0x02, 0x01, 0x00]).read(OCTET_STRING, "an octet string"),
            Err(DerError("an octet string"))
        );
        assert!(bit_string(&[1, 0xff]).is_err());
        assert!(Signed::parse(&sequence(&[&tlv(SEQUENCE, &[])])).is_err());
    }

    #[test]
    fn generalized_time_round_trip() {
        assert_eq!(generalized_time(b"19700101000000Z"), Ok(0));
        assert_eq!(generalized_time(b"20261122103045Z"), Ok(1_795_343_445));
        assert_eq!(generalized_time(b"20261122103045.123Z"), Ok(1_795_343_445));
        assert_eq!(format_time(1_795_343_445), "2026-11-22T10:30:45Z");
        assert_eq!(format_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(generalized_time(b"20000229000000Z"), Ok(951_782_400));
        for bad in [
            &b"2026112210304Z"[..],
            b"20261122103045",
            b"20261122103045+0100",
            b"20261322103045Z",
            b"20261122103045.Z",
            b"2026112210304aZ",
        ] {
            assert!(generalized_time(bad).is_err(), "{bad:?}");
        }
    }
}
