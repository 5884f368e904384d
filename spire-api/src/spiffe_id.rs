//! Conversion between `spiffe://trust-domain/path` URIs and [`Spiffeid`], validated against the
//! SPIFFE ID specification (lowercase trust domain of `[a-z0-9.-_]`, path segments of
//! `[a-zA-Z0-9.-_]`, no empty, `.` or `..` segments, no query, fragment, port or user info, at
//! most 2048 bytes).

use crate::types::Spiffeid;

/// The URI scheme prefix of every SPIFFE ID.
pub const SCHEME_PREFIX: &str = "spiffe://";

/// The longest SPIFFE ID the specification allows, in bytes.
pub const MAX_LEN: usize = 2048;

/// Why a string is not a valid SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// The URI does not start with `spiffe://`.
    #[error("SPIFFE ID {id:?} does not start with \"spiffe://\"")]
    MissingScheme {
        /// The rejected input.
        id: String,
    },
    /// The URI is longer than [`MAX_LEN`].
    #[error("SPIFFE ID is {len} bytes long, more than the maximum of {MAX_LEN}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The trust domain is empty.
    #[error("SPIFFE ID {id:?} has an empty trust domain")]
    EmptyTrustDomain {
        /// The rejected input.
        id: String,
    },
    /// The trust domain holds a character outside `[a-z0-9.-_]`.
    #[error(
        "trust domain {trust_domain:?} contains {character:?}; only lowercase letters, digits, '.', '-' and '_' are allowed"
    )]
    BadTrustDomainChar {
        /// The rejected trust domain.
        trust_domain: String,
        /// The first offending character.
        character: char,
    },
    /// The path does not start with `/`.
    #[error("SPIFFE ID path {path:?} must be empty or start with '/'")]
    PathWithoutLeadingSlash {
        /// The rejected path.
        path: String,
    },
    /// The path has an empty segment (`//` or a trailing `/`).
    #[error("SPIFFE ID path {path:?} has an empty segment or a trailing '/'")]
    EmptySegment {
        /// The rejected path.
        path: String,
    },
    /// The path has a `.` or `..` segment.
    #[error("SPIFFE ID path {path:?} has a '.' or '..' segment")]
    DotSegment {
        /// The rejected path.
        path: String,
    },
    /// The path holds a character outside `[a-zA-Z0-9.-_]` (or `/` between segments).
    #[error(
        "SPIFFE ID path {path:?} contains {character:?}; only letters, digits, '.', '-', '_' and '/' are allowed"
    )]
    BadPathChar {
        /// The rejected path.
        path: String,
        /// The first offending character.
        character: char,
    },
}

/// Checks a trust domain name (no scheme), e.g. `example.org`.
///
/// # Errors
///
/// [`SpiffeIdError::EmptyTrustDomain`] or [`SpiffeIdError::BadTrustDomainChar`].
pub fn validate_trust_domain(trust_domain: &str) -> Result<(), SpiffeIdError> {
    if trust_domain.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain {
            id: format!("{SCHEME_PREFIX}{trust_domain}"),
        });
    }
    if let Some(character) = trust_domain
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        return Err(SpiffeIdError::BadTrustDomainChar {
            trust_domain: trust_domain.to_owned(),
            character,
        });
    }
    Ok(())
}

/// Checks a SPIFFE ID path: empty, or `/`-separated non-empty segments.
///
/// # Errors
///
/// One of the path variants of [`SpiffeIdError`].
pub fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(SpiffeIdError::PathWithoutLeadingSlash {
            path: path.to_owned(),
        });
    };
    for segment in rest.split('/') {
        if segment.is_empty() {
            return Err(SpiffeIdError::EmptySegment {
                path: path.to_owned(),
            });
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdError::DotSegment {
                path: path.to_owned(),
            });
        }
        if let Some(character) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(SpiffeIdError::BadPathChar {
                path: path.to_owned(),
                character,
            });
        }
    }
    Ok(())
}

impl Spiffeid {
    /// Parses and validates a `spiffe://` URI.
    ///
    /// # Errors
    ///
    /// A [`SpiffeIdError`] naming what is wrong.
    pub fn from_uri(uri: &str) -> Result<Self, SpiffeIdError> {
        if uri.len() > MAX_LEN {
            return Err(SpiffeIdError::TooLong { len: uri.len() });
        }
        let Some(rest) = uri.strip_prefix(SCHEME_PREFIX) else {
            return Err(SpiffeIdError::MissingScheme { id: uri.to_owned() });
        };
        let (trust_domain, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        if trust_domain.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain { id: uri.to_owned() });
        }
        validate_trust_domain(trust_domain)?;
        validate_path(path)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            path: path.to_owned(),
        })
    }

    /// Validates the parts and returns the `spiffe://` URI.
    ///
    /// # Errors
    ///
    /// A [`SpiffeIdError`] when the trust domain or path is invalid.
    pub fn to_uri(&self) -> Result<String, SpiffeIdError> {
        validate_trust_domain(&self.trust_domain)?;
        validate_path(&self.path)?;
        let uri = format!("{SCHEME_PREFIX}{}{}", self.trust_domain, self.path);
        if uri.len() > MAX_LEN {
            return Err(SpiffeIdError::TooLong { len: uri.len() });
        }
        Ok(uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_valid_ids() {
        for uri in [
            "spiffe://example.org",
            "spiffe://hpcs.test/hpcs/server",
            "spiffe://a-b_c.d/x/Y.z/0-9_",
        ] {
            let id = Spiffeid::from_uri(uri).unwrap();
            assert_eq!(id.to_uri().unwrap(), uri);
        }
        let id = Spiffeid::from_uri("spiffe://td/a/b").unwrap();
        assert_eq!(id.trust_domain, "td");
        assert_eq!(id.path, "/a/b");
    }

    #[test]
    fn rejects_invalid_ids() {
        let cases: &[(&str, &str)] = &[
            ("http://td/a", "does not start with \"spiffe://\""),
            ("spiffe:///a", "empty trust domain"),
            ("spiffe://TD/a", "contains 'T'"),
            ("spiffe://td:8080/a", "contains ':'"),
            ("spiffe://u@td/a", "contains '@'"),
            ("spiffe://td/a//b", "empty segment"),
            ("spiffe://td/a/", "trailing '/'"),
            ("spiffe://td/./a", "'.' or '..'"),
            ("spiffe://td/a/..", "'.' or '..'"),
            ("spiffe://td/a?b", "contains '?'"),
            ("spiffe://td/a#b", "contains '#'"),
            ("spiffe://td/a b", "contains ' '"),
        ];
        for (uri, expected) in cases {
            let err = Spiffeid::from_uri(uri).unwrap_err().to_string();
            assert!(err.contains(expected), "{uri}: {err}");
        }
        let long = format!("spiffe://td/{}", "a".repeat(MAX_LEN));
        assert!(matches!(
            Spiffeid::from_uri(&long),
            Err(SpiffeIdError::TooLong { .. })
        ));
        let no_slash = Spiffeid {
            trust_domain: "td".into(),
            path: "a".into(),
        };
        assert!(matches!(
            no_slash.to_uri(),
            Err(SpiffeIdError::PathWithoutLeadingSlash { .. })
        ));
    }
}
