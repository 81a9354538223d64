//! The classic pcap file format (what tcpdump writes), written by hand: a
//! 24-byte file header, then a 16-byte header before each frame. Native
//! byte order with the microsecond magic, as libpcap itself writes it.

use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

pub const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
pub const LINKTYPE_ETHERNET: u32 = 1;

pub struct PcapWriter<W: Write> {
    out: W,
    snaplen: u32,
}

impl<W: Write> PcapWriter<W> {
    pub fn new(mut out: W, snaplen: u32) -> io::Result<Self> {
        let mut header = Vec::with_capacity(24);
        header.extend_from_slice(&MAGIC_MICROS.to_ne_bytes());
        header.extend_from_slice(&2u16.to_ne_bytes()); // version 2.4
        header.extend_from_slice(&4u16.to_ne_bytes());
        header.extend_from_slice(&0i32.to_ne_bytes()); // thiszone: UTC
        header.extend_from_slice(&0u32.to_ne_bytes()); // sigfigs
        header.extend_from_slice(&snaplen.to_ne_bytes());
        header.extend_from_slice(&LINKTYPE_ETHERNET.to_ne_bytes());
        out.write_all(&header)?;
        Ok(PcapWriter { out, snaplen })
    }

    /// Appends one frame seen at `when` (cut to the snap length).
    pub fn write_frame(&mut self, when: SystemTime, frame: &[u8]) -> io::Result<()> {
        let since = when.duration_since(UNIX_EPOCH).unwrap_or_default();
        let captured = frame.len().min(self.snaplen as usize);
        let mut record = Vec::with_capacity(16 + captured);
        record.extend_from_slice(&(since.as_secs() as u32).to_ne_bytes());
        record.extend_from_slice(&since.subsec_micros().to_ne_bytes());
        record.extend_from_slice(&(captured as u32).to_ne_bytes());
        record.extend_from_slice(&(frame.len() as u32).to_ne_bytes());
        record.extend_from_slice(&frame[..captured]);
        self.out.write_all(&record)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn header_and_record_layout() {
        let mut writer = PcapWriter::new(Vec::new(), 4).unwrap();
        let when = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_000);
        writer.write_frame(when, &[1, 2, 3, 4, 5, 6]).unwrap();
        let bytes = writer.into_inner();
        assert_eq!(bytes.len(), 24 + 16 + 4);
        let u32_at = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!(u32_at(0), 0xa1b2c3d4);
        assert_eq!(u32_at(16), 4, "snaplen");
        assert_eq!(u32_at(20), 1, "ethernet");
        assert_eq!(u32_at(24), 1_700_000_000);
        assert_eq!(u32_at(28), 123_456);
        assert_eq!(u32_at(32), 4, "captured length is cut to the snap length");
        assert_eq!(u32_at(36), 6, "original length");
        assert_eq!(&bytes[40..], &[1, 2, 3, 4]);
    }
}
