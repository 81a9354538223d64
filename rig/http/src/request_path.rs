//! From the request target to the path handed to the provisioning tree.

use percent_encoding::percent_decode_str;

/// Percent-decodes the path part of a request target. The tree then judges
/// the decoded text, so `%2e%2e/` and `%00` are refused exactly like `../` and
/// a raw NUL. Bytes that do not decode to UTF-8 are refused here.
pub fn decode(raw_path: &str) -> Result<String, String> {
    percent_decode_str(raw_path)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| "path is not UTF-8 after percent-decoding".to_owned())
}

/// The file name to report when the tree could not normalise the path itself.
pub fn shown(decoded: &str) -> String {
    phonerig_core::tree::normalise_request_path(decoded)
        .unwrap_or_else(|_| decoded.trim_start_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use phonerig_core::tree::normalise_request_path;
    use phonerig_core::ResolveError;
    use rstest::rstest;

    #[rstest]
    #[case("/cfg0012.xml", "/cfg0012.xml")]
    #[case("/cfg%20a.xml", "/cfg a.xml")]
    #[case("/a+b", "/a+b")]
    #[case("/%2e%2e/etc/passwd", "/../etc/passwd")]
    #[case("/%2E%2E%2Fetc", "/../etc")]
    #[case("/cfg%00.xml", "/cfg\0.xml")]
    #[case("/%5c..%5cx", "/\\..\\x")]
    #[case("/%zz", "/%zz")]
    fn decodes(#[case] raw: &str, #[case] expected: &str) {
        assert_eq!(decode(raw).unwrap(), expected);
    }

    #[test]
    fn invalid_utf8_is_refused() {
        assert!(decode("/%ff%fe").is_err());
    }

    #[rstest]
    #[case("/%2e%2e/etc/passwd")]
    #[case("/cfg/%2e%2e/%2e%2e/etc/passwd")]
    #[case("/cfg%00.xml")]
    #[case("/..%5cetc")]
    fn encoded_escapes_are_refused_by_the_tree(#[case] raw: &str) {
        let decoded = decode(raw).unwrap();
        assert!(
            matches!(
                normalise_request_path(&decoded),
                Err(ResolveError::Refused(_))
            ),
            "{raw}"
        );
    }

    #[rstest]
    #[case("/cfg//x.xml", "cfg/x.xml")]
    #[case("/../x", "../x")]
    fn shown_names(#[case] decoded: &str, #[case] expected: &str) {
        assert_eq!(shown(decoded), expected);
    }
}
