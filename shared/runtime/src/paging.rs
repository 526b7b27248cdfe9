//! Paging of list and search calls: the page size, and opaque page tokens.
//!
//! A token is the base64url of the listing's kind and its cursor fields, so
//! clients cannot build or read one (they only hand back what they got), a
//! token of one listing is refused by another, and the cursor format can
//! change without breaking the API.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ta_proto::common::PageRequest;

use crate::Violations;

pub const DEFAULT_PAGE_SIZE: i64 = 20;
pub const MAX_PAGE_SIZE: i32 = 100;

/// Separates the kind and the fields; never part of a cursor value.
const SEPARATOR: char = '\u{1f}';

/// The page size asked for: 0 means the default, 1-100 are taken as they are.
pub fn page_size(page: Option<&PageRequest>, violations: &mut Violations) -> i64 {
    match page.map_or(0, |p| p.page_size) {
        0 => DEFAULT_PAGE_SIZE,
        n @ 1..=MAX_PAGE_SIZE => i64::from(n),
        _ => {
            violations.add(
                "page.page_size",
                format!("must be 0 (default {DEFAULT_PAGE_SIZE}) to {MAX_PAGE_SIZE}"),
            );
            DEFAULT_PAGE_SIZE
        }
    }
}

/// The token continuing a listing of `kind` after the item with these cursor fields.
pub fn token(kind: &str, fields: &[&str]) -> String {
    let mut text = String::from(kind);
    for field in fields {
        text.push(SEPARATOR);
        text.push_str(field);
    }
    URL_SAFE_NO_PAD.encode(text)
}

/// The cursor fields of the request's page token for a listing of `kind`:
/// `None` for the first page; a token this listing did not issue is a
/// violation of `page.page_token`. `parse` turns the fields into the cursor.
pub fn cursor<T>(
    page: Option<&PageRequest>,
    kind: &str,
    violations: &mut Violations,
    parse: impl FnOnce(&[&str]) -> Option<T>,
) -> Option<T> {
    let token = page.map_or("", |p| p.page_token.as_str());
    if token.is_empty() {
        return None;
    }
    let parsed = URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| {
            let mut parts = text.split(SEPARATOR);
            (parts.next() == Some(kind))
                .then(|| parse(&parts.collect::<Vec<_>>()))
                .flatten()
        });
    if parsed.is_none() {
        violations.add("page.page_token", "is not a token this listing returned");
    }
    parsed
}

/// Cuts one page out of `limit + 1` rows fetched: the page, and the token of
/// the next one (empty on the last page).
pub fn split_page<T>(
    mut rows: Vec<T>,
    limit: i64,
    next: impl FnOnce(&T) -> String,
) -> (Vec<T>, String) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() > limit {
        rows.truncate(limit);
        let token = rows.last().map(next).unwrap_or_default();
        (rows, token)
    } else {
        (rows, String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(token: &str) -> Option<PageRequest> {
        Some(PageRequest {
            page_size: 0,
            page_token: token.into(),
        })
    }

    #[test]
    fn tokens_round_trip_within_their_listing_only() {
        let token = token("reviews", &["1700000000", "contract-9"]);
        let mut v = Violations::new();
        let fields = cursor(page(&token).as_ref(), "reviews", &mut v, |f| {
            Some(f.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        });
        assert_eq!(fields, Some(vec!["1700000000".into(), "contract-9".into()]));
        assert!(v.is_empty());

        for bad in [token.as_str(), "not base64!", "c3VwcGxpZXJz"] {
            let mut v = Violations::new();
            let parsed = cursor(page(bad).as_ref(), "suppliers", &mut v, |f| {
                (f.len() == 1).then_some(())
            });
            assert_eq!(parsed, None, "{bad}");
            assert!(v.into_error().to_string().contains("page.page_token"));
        }
    }

    #[test]
    fn page_sizes_are_bounded() {
        let mut v = Violations::new();
        let size = |n| PageRequest {
            page_size: n,
            page_token: String::new(),
        };
        assert_eq!(page_size(None, &mut v), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(Some(&size(100)), &mut v), 100);
        assert!(v.is_empty());
        page_size(Some(&size(101)), &mut v);
        page_size(Some(&size(-1)), &mut v);
        assert!(v.into_error().to_string().contains("page.page_size"));
    }

    #[test]
    fn split_page_says_whether_more_follow() {
        let (rows, next) = split_page(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!((rows, next.as_str()), (vec![1, 2], "2"));
        let (rows, next) = split_page(vec![1, 2], 2, |n| n.to_string());
        assert_eq!((rows, next.as_str()), (vec![1, 2], ""));
    }
}
