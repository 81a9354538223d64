//! The `Range` request header (RFC 9110 §14), single byte ranges only: phones
//! resume interrupted firmware downloads with one range; a multi-range request
//! is answered with the whole file, which RFC 9110 allows.

/// What to send of a representation of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable Range header: the whole file, 200.
    Whole,
    /// Bytes `start..=end`, 206.
    Part { start: u64, end: u64 },
    /// The range lies outside the file, 416.
    Unsatisfiable,
}

impl RangeRequest {
    /// Interprets the `Range` header value (if any) for a file of `size` bytes.
    pub fn parse(header: Option<&str>, size: u64) -> RangeRequest {
        let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
            return RangeRequest::Whole;
        };
        if spec.contains(',') {
            return RangeRequest::Whole;
        }
        let Some((first, last)) = spec.trim().split_once('-') else {
            return RangeRequest::Whole;
        };
        let (first, last) = (first.trim(), last.trim());
        let number = |text: &str| -> Option<u64> {
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            text.parse().ok()
        };
        if first.is_empty() {
            // Suffix range: the last N bytes.
            return match number(last) {
                Some(0) => RangeRequest::Unsatisfiable,
                Some(_) if size == 0 => RangeRequest::Unsatisfiable,
                Some(n) => RangeRequest::Part {
                    start: size.saturating_sub(n),
                    end: size - 1,
                },
                None => RangeRequest::Whole,
            };
        }
        let Some(start) = number(first) else {
            return RangeRequest::Whole;
        };
        let end = if last.is_empty() {
            None
        } else {
            match number(last) {
                Some(end) if end >= start => Some(end),
                // `bytes=5-2` or garbage: syntactically invalid, so ignored.
                _ => return RangeRequest::Whole,
            }
        };
        if start >= size {
            return RangeRequest::Unsatisfiable;
        }
        RangeRequest::Part {
            start,
            end: end.map_or(size - 1, |e| e.min(size - 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(None, 100, RangeRequest::Whole)]
    #[case(Some("bytes=0-9"), 100, RangeRequest::Part { start: 0, end: 9 })]
    #[case(Some("bytes=90-"), 100, RangeRequest::Part { start: 90, end: 99 })]
    #[case(Some("bytes=90-500"), 100, RangeRequest::Part { start: 90, end: 99 })]
    #[case(Some("bytes=-10"), 100, RangeRequest::Part { start: 90, end: 99 })]
    #[case(Some("bytes=-500"), 100, RangeRequest::Part { start: 0, end: 99 })]
    #[case(Some("bytes=100-"), 100, RangeRequest::Unsatisfiable)]
    #[case(Some("bytes=-0"), 100, RangeRequest::Unsatisfiable)]
    #[case(Some("bytes=0-"), 0, RangeRequest::Unsatisfiable)]
    #[case(Some("bytes=-5"), 0, RangeRequest::Unsatisfiable)]
    #[case(Some("bytes=5-2"), 100, RangeRequest::Whole)]
    #[case(Some("bytes=0-1,5-6"), 100, RangeRequest::Whole)]
    #[case(Some("items=0-1"), 100, RangeRequest::Whole)]
    #[case(Some("bytes=x-1"), 100, RangeRequest::Whole)]
    #[case(Some("bytes=+1-2"), 100, RangeRequest::Whole)]
    fn ranges(#[case] header: Option<&str>, #[case] size: u64, #[case] expected: RangeRequest) {
        assert_eq!(RangeRequest::parse(header, size), expected);
    }
}
