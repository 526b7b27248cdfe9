//! Text rules every service applies to request fields, reported as field
//! violations.

use crate::errors::Violations;

/// Postgres `text` cannot hold NUL characters.
pub fn is_storable(text: &str) -> bool {
    !text.contains('\0')
}

/// Ids that other systems give us (contracts, disputes, inquiries).
pub fn validate_reference(field: &str, value: &str, violations: &mut Violations) {
    violations.require(
        (1..=64).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')),
        field,
        "must be 1-64 letters, digits, '-', '_', '.' or ':'",
    );
}

/// A required free text, trimmed: 1 to `max` characters, no NUL.
pub fn require_text(field: &str, value: &str, max: usize, violations: &mut Violations) -> String {
    let value = value.trim();
    violations.require(
        !value.is_empty() && value.chars().count() <= max && is_storable(value),
        field,
        &format!("is required, at most {max} characters, no NUL"),
    );
    value.to_string()
}

/// An optional free text, trimmed: at most `max` characters, no NUL.
pub fn optional_text(field: &str, value: &str, max: usize, violations: &mut Violations) -> String {
    let value = value.trim();
    violations.require(
        value.chars().count() <= max && is_storable(value),
        field,
        &format!("must be at most {max} characters, no NUL"),
    );
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_and_references_are_checked() {
        let mut v = Violations::new();
        assert_eq!(require_text("title", "  Order 42 ", 20, &mut v), "Order 42");
        validate_reference("contract_id", "c-42:v1", &mut v);
        optional_text("note", "", 10, &mut v);
        assert!(v.is_empty());
        require_text("title", "   ", 20, &mut v);
        require_text("name", "a\0b", 20, &mut v);
        validate_reference("contract_id", "has space", &mut v);
        optional_text("note", "eleven chars", 10, &mut v);
        let message = v.finish(()).unwrap_err().to_string();
        for field in ["title", "name", "contract_id", "note"] {
            assert!(message.contains(field), "{message}");
        }
    }
}
