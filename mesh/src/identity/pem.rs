//! Strict PEM reading: an input that must hold exactly one section of one kind.

use rustls_pki_types::pem::{self, SectionKind};

/// Why PEM input was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PemError {
    /// The text is not well-formed PEM.
    #[error("malformed PEM: {0}")]
    Malformed(String),
    /// The input does not hold exactly one section, or holds one of another kind.
    #[error("expected exactly one PEM {expected:?} section, found [{found}]")]
    Sections {
        expected: SectionKind,
        found: String,
    },
}

/// The DER contents of the single `kind` section of `input`. Any other section (a stray private key
/// next to a CSR, a second certificate in a chain entry) is an error, not something to skip.
pub fn single_section(input: &[u8], kind: SectionKind) -> Result<Vec<u8>, PemError> {
    let mut reader = input;
    let mut sections = Vec::new();
    while let Some(section) =
        pem::from_buf(&mut reader).map_err(|e| PemError::Malformed(e.to_string()))?
    {
        sections.push(section);
    }
    match <[_; 1]>::try_from(sections) {
        Ok([(found, der)]) if found == kind => Ok(der),
        Ok([(found, _)]) => Err(PemError::Sections {
            expected: kind,
            found: format!("{found:?}"),
        }),
        Err(sections) => Err(PemError::Sections {
            expected: kind,
            found: sections
                .iter()
                .map(|(k, _)| format!("{k:?}"))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nAAEC\n-----END PRIVATE KEY-----\n";

    #[test]
    fn accepts_exactly_one_section_of_the_kind() {
        assert_eq!(
            single_section(CERT.as_bytes(), SectionKind::Certificate).unwrap(),
            vec![0, 1, 2]
        );
    }

    #[test]
    fn refuses_none_several_or_another_kind() {
        let cases = [
            ("empty", String::new()),
            ("garbage", "not pem at all".to_owned()),
            ("two", format!("{CERT}{CERT}")),
            ("cert and key", format!("{CERT}{KEY}")),
            ("key only", KEY.to_owned()),
            (
                "bad base64",
                "-----BEGIN CERTIFICATE-----\n@@@\n-----END CERTIFICATE-----\n".to_owned(),
            ),
            (
                "unterminated",
                "-----BEGIN CERTIFICATE-----\nAAEC\n".to_owned(),
            ),
        ];
        for (name, input) in cases {
            assert!(
                single_section(input.as_bytes(), SectionKind::Certificate).is_err(),
                "{name} was accepted"
            );
        }
    }
}
