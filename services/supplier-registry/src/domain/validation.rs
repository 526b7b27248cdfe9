//! Input rules of the registry, reported as field violations all at once.

use ta_proto::supplier as pb;
use ta_runtime::{Violations, money::is_country_code};

use super::Contact;

const MAX_CONTACTS: usize = 10;

/// A registration that passed validation.
#[derive(Clone, Debug, PartialEq)]
pub struct NewSupplier {
    pub legal_name: String,
    pub country_code: String,
    pub business_licence_number: String,
    pub contacts: Vec<Contact>,
}

impl NewSupplier {
    pub fn validate(request: &pb::RegisterSupplierRequest, violations: &mut Violations) -> Self {
        let legal_name = request.legal_name.trim().to_string();
        violations.require(
            (2..=200).contains(&legal_name.chars().count()) && is_storable(&legal_name),
            "legal_name",
            "must be 2-200 characters, no NUL",
        );
        violations.require(
            is_country_code(&request.country_code),
            "country_code",
            "must be an ISO 3166-1 alpha-2 code such as CN",
        );
        // Upper case: licence numbers are compared without regard to case.
        let licence = request.business_licence_number.trim().to_ascii_uppercase();
        violations.require(
            (3..=64).contains(&licence.len())
                && licence
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'.')),
            "business_licence_number",
            "must be 3-64 letters, digits, '-', '/' or '.'",
        );
        let contacts = validate_contacts(&request.contacts, violations);
        Self {
            legal_name,
            country_code: request.country_code.clone(),
            business_licence_number: licence,
            contacts,
        }
    }
}

pub fn validate_contacts(contacts: &[pb::Contact], violations: &mut Violations) -> Vec<Contact> {
    if contacts.is_empty() || contacts.len() > MAX_CONTACTS {
        violations.add("contacts", "must list 1-10 contacts");
    }
    contacts
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let name = c.name.trim().to_string();
            violations.require(
                (1..=120).contains(&name.chars().count()) && is_storable(&name),
                &format!("contacts[{i}].name"),
                "must be 1-120 characters, no NUL",
            );
            violations.require(
                is_email(&c.email),
                &format!("contacts[{i}].email"),
                "must be an email address",
            );
            violations.require(
                c.phone.is_empty() || is_e164(&c.phone),
                &format!("contacts[{i}].phone"),
                "must be empty or E.164, e.g. +8613800138000",
            );
            Contact {
                name,
                email: c.email.clone(),
                phone: c.phone.clone(),
            }
        })
        .collect()
}

/// Postgres text (and jsonb) cannot hold NUL: refused as input, not failed on insert.
pub use ta_runtime::text::{is_storable, validate_reference};

fn is_email(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else {
        return false;
    };
    text.len() <= 254
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',')
        && !domain.contains('@')
}

fn is_e164(text: &str) -> bool {
    text.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
    })
}
