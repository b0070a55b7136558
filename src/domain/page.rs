//! The size of a page of a list (contexts, versions): parsed once at the edge, so a service
//! method cannot be asked for a page of no items or of a million.

use std::fmt;

/// 1..=[`PageLimit::MAX`] items; [`PageLimit::DEFAULT`] when the caller names none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit(usize);

/// A page size outside 1..=[`PageLimit::MAX`] (or not an integer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidLimit;

impl fmt::Display for InvalidLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "limit must be an integer from 1 to {}", PageLimit::MAX)
    }
}

impl std::error::Error for InvalidLimit {}

impl PageLimit {
    /// The largest page.
    pub const MAX: usize = 1000;
    /// The page size when none is asked for.
    pub const DEFAULT: PageLimit = PageLimit(100);

    /// The limit a caller asked for, or the default.
    pub fn parse(limit: Option<i64>) -> Result<Self, InvalidLimit> {
        let Some(n) = limit else {
            return Ok(Self::DEFAULT);
        };
        usize::try_from(n)
            .ok()
            .filter(|n| (1..=Self::MAX).contains(n))
            .map(Self)
            .ok_or(InvalidLimit)
    }

    /// The limit as text from a query string.
    pub fn parse_text(raw: Option<&str>) -> Result<Self, InvalidLimit> {
        match raw {
            None => Ok(Self::DEFAULT),
            Some(raw) => Self::parse(Some(raw.parse::<i64>().map_err(|_| InvalidLimit)?)),
        }
    }

    pub fn get(self) -> usize {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_one_to_a_thousand_items_a_hundred_by_default() {
        assert_eq!(PageLimit::parse(None).map(PageLimit::get), Ok(100));
        assert_eq!(PageLimit::parse(Some(1000)).map(PageLimit::get), Ok(1000));
        for bad in [0, -1, 1001] {
            assert_eq!(PageLimit::parse(Some(bad)), Err(InvalidLimit));
        }
        assert_eq!(PageLimit::parse_text(Some("7")).map(PageLimit::get), Ok(7));
        assert_eq!(PageLimit::parse_text(Some("seven")), Err(InvalidLimit));
        assert_eq!(
            InvalidLimit.to_string(),
            "limit must be an integer from 1 to 1000"
        );
    }
}
