//! The owning service's schema, the one piece of SQL that is not a parameter.

use std::fmt;

/// A service's own schema name: lowercase letters, digits and `_`, starting
/// with a letter, at most 63 bytes (a Postgres identifier needing no quotes).
/// Checked once, so every statement can embed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Schema(&'static str);

impl Schema {
    /// # Errors
    /// The name is not a plain identifier (see the type's docs).
    pub fn new(name: &'static str) -> Result<Self, String> {
        let plain = !name.is_empty()
            && name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if plain {
            Ok(Self(name))
        } else {
            Err(format!(
                "`{name}` is not a plain schema name (lowercase letters, digits and _, starting with a letter)"
            ))
        }
    }

    pub fn name(self) -> &'static str {
        self.0
    }

    /// `statement` with every `{schema}` replaced by the name.
    pub(crate) fn sql(self, statement: &str) -> String {
        statement.replace("{schema}", self.0)
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::Schema;

    #[test]
    fn only_plain_identifiers_are_schemas() {
        for good in ["escrow", "supplier_registry", "s1"] {
            assert!(Schema::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Escrow",
            "1abc",
            "a-b",
            "a;drop",
            "x\"y",
            &"a".repeat(64),
        ] {
            let bad: &'static str = Box::leak(bad.to_owned().into_boxed_str());
            assert!(Schema::new(bad).is_err(), "{bad}");
        }
    }
}
