//! Keyset pagination cursors shared by every list endpoint.
//!
//! A cursor names the last row of the previous page by its sort key and id, so the next
//! page is `WHERE (sort_key, id) < (cursor)`: stable under concurrent inserts and cheap on
//! both databases. It is opaque to clients (base64url), and decoding it never trusts it:
//! a tampered cursor is a 400, not a 500.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The default number of items a list returns when the client does not say.
pub const DEFAULT_PAGE_LIMIT: u32 = 50;
/// The most items one page may hold.
pub const MAX_PAGE_LIMIT: u32 = 200;
/// Longest cursor text accepted; a longer one cannot be one we issued.
const MAX_CURSOR_LEN: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The ordering column of the last row seen (usually a timestamp in micros).
    pub sort_key: i64,
    /// The id of the last row seen; breaks ties between equal sort keys.
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("cursor is not one this API issued")]
    InvalidCursor,
    #[error("limit must be between 1 and {MAX_PAGE_LIMIT}")]
    InvalidLimit,
}

impl Cursor {
    pub fn new(sort_key: i64, id: impl Into<String>) -> Self {
        Self { sort_key, id: id.into() }
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}|{}", self.sort_key, self.id))
    }

    pub fn decode(text: &str) -> Result<Self, PageError> {
        if text.is_empty() || text.len() > MAX_CURSOR_LEN {
            return Err(PageError::InvalidCursor);
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| PageError::InvalidCursor)?;
        let raw = String::from_utf8(bytes).map_err(|_| PageError::InvalidCursor)?;
        let (sort_key, id) = raw.split_once('|').ok_or(PageError::InvalidCursor)?;
        let sort_key = sort_key.parse::<i64>().map_err(|_| PageError::InvalidCursor)?;
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')) {
            return Err(PageError::InvalidCursor);
        }
        Ok(Self { sort_key, id: id.to_owned() })
    }
}

/// Validates a requested page size, applying the default when absent.
pub fn page_limit(requested: Option<u32>) -> Result<u32, PageError> {
    match requested {
        None => Ok(DEFAULT_PAGE_LIMIT),
        Some(limit) if (1..=MAX_PAGE_LIMIT).contains(&limit) => Ok(limit),
        Some(_) => Err(PageError::InvalidLimit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(sort_key in any::<i64>(), id in "[a-zA-Z0-9_.:-]{1,64}") {
            let cursor = Cursor::new(sort_key, id);
            prop_assert_eq!(Cursor::decode(&cursor.encode()), Ok(cursor));
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,600}") {
            let _ = Cursor::decode(&text);
        }
    }

    #[test]
    fn rejects_tampered_and_oversized_cursors() {
        assert_eq!(Cursor::decode(""), Err(PageError::InvalidCursor));
        assert_eq!(Cursor::decode("not base64!"), Err(PageError::InvalidCursor));
        assert_eq!(Cursor::decode(&URL_SAFE_NO_PAD.encode("abc|id")), Err(PageError::InvalidCursor));
        assert_eq!(Cursor::decode(&URL_SAFE_NO_PAD.encode("1|x' OR 1=1")), Err(PageError::InvalidCursor));
        assert_eq!(Cursor::decode(&"A".repeat(600)), Err(PageError::InvalidCursor));
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(page_limit(None), Ok(DEFAULT_PAGE_LIMIT));
        assert_eq!(page_limit(Some(0)), Err(PageError::InvalidLimit));
        assert_eq!(page_limit(Some(MAX_PAGE_LIMIT + 1)), Err(PageError::InvalidLimit));
        assert_eq!(page_limit(Some(7)), Ok(7));
    }
}
