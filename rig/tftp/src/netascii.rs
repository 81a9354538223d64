//! netascii (RFC 764 as used by RFC 1350): on the wire every line ends in
//! CR LF and a bare CR is sent as CR NUL. Converted on the fly so a file of any
//! size streams without being loaded whole.

/// Appends the netascii form of `raw` to `out`. Each input byte maps on its
/// own, so chunks can be encoded independently.
pub fn encode_into(raw: &[u8], out: &mut Vec<u8>) {
    for &byte in raw {
        match byte {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            other => out.push(other),
        }
    }
}

/// Turns netascii back into local text (LF line ends). A CR at the end of one
/// DATA block pairs with the first byte of the next, hence the state.
#[derive(Debug, Default)]
pub struct Decoder {
    pending_cr: bool,
}

impl Decoder {
    pub fn decode_into(&mut self, wire: &[u8], out: &mut Vec<u8>) {
        for &byte in wire {
            if self.pending_cr {
                self.pending_cr = false;
                match byte {
                    b'\n' => out.push(b'\n'),
                    b'\0' => out.push(b'\r'),
                    // A bare CR followed by something else is not netascii;
                    // keep both bytes rather than lose data.
                    b'\r' => {
                        out.push(b'\r');
                        self.pending_cr = true;
                    }
                    other => out.extend_from_slice(&[b'\r', other]),
                }
            } else if byte == b'\r' {
                self.pending_cr = true;
            } else {
                out.push(byte);
            }
        }
    }

    /// Flushes a CR that ended the transfer.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.pending_cr) {
            out.push(b'\r');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(b"plain", b"plain")]
    #[case(b"a\nb\n", b"a\r\nb\r\n")]
    #[case(b"dos\r\nline", b"dos\r\0\r\nline")]
    #[case(b"bare\rcr", b"bare\r\0cr")]
    #[case(b"\n\n", b"\r\n\r\n")]
    #[case(b"", b"")]
    fn encodes(#[case] raw: &[u8], #[case] wire: &[u8]) {
        let mut out = Vec::new();
        encode_into(raw, &mut out);
        assert_eq!(out, wire);
    }

    #[rstest]
    #[case(b"a\r\nb", b"a\nb")]
    #[case(b"x\r\0y", b"x\ry")]
    #[case(b"lone\rcr", b"lone\rcr")]
    #[case(b"end\r", b"end\r")]
    #[case(b"\r\r\n", b"\r\n")]
    fn decodes(#[case] wire: &[u8], #[case] raw: &[u8]) {
        let mut decoder = Decoder::default();
        let mut out = Vec::new();
        decoder.decode_into(wire, &mut out);
        decoder.finish(&mut out);
        assert_eq!(out, raw);
    }

    #[test]
    fn round_trip_split_at_every_position() {
        let raw = b"line one\nline two\r\nodd\rend\n";
        let mut wire = Vec::new();
        encode_into(raw, &mut wire);
        for split in 0..=wire.len() {
            let mut decoder = Decoder::default();
            let mut out = Vec::new();
            decoder.decode_into(&wire[..split], &mut out);
            decoder.decode_into(&wire[split..], &mut out);
            decoder.finish(&mut out);
            assert_eq!(out, raw, "split at {split}");
        }
    }
}
