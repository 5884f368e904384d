//! A string holding secret material (base64 private keys in the state files): zeroed on drop,
//! redacted in `Debug`, serialised transparently.

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Secret text.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps `value`.
    #[must_use]
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret text.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted_and_serde_transparent() {
        let s = SecretString::new("key".into());
        assert_eq!(format!("{s:?}"), "SecretString(<redacted>)");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"key\"");
        let back: SecretString = serde_json::from_str("\"key\"").unwrap();
        assert_eq!(back.expose(), "key");
    }
}
