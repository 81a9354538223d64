//! The bytes of a served file cut into DATA blocks, streamed from disk (or
//! from a rendered template), with netascii conversion and a scenario's
//! `truncate` applied on the way.

use std::io;
use std::pin::Pin;
use std::sync::Arc;

use phonerig_core::tree::Body;
use phonerig_core::ServedFile;
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};

use crate::netascii;
use crate::packet::Mode;

/// `Arc<Vec<u8>>` as a byte slice, so a rendered template can back a `Cursor`
/// without copying it per transfer.
struct SharedBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

pub struct BlockSource {
    reader: Pin<Box<dyn AsyncRead + Send>>,
    mode: Mode,
    /// Wire bytes read and converted but not yet handed out as a block.
    pending: Vec<u8>,
    scratch: Vec<u8>,
    eof: bool,
}

impl BlockSource {
    pub async fn open(served: &ServedFile, mode: Mode) -> io::Result<BlockSource> {
        let limit = served.truncate.unwrap_or(u64::MAX);
        let reader: Pin<Box<dyn AsyncRead + Send>> = match &served.body {
            Body::Bytes(bytes) => {
                Box::pin(std::io::Cursor::new(SharedBytes(bytes.clone())).take(limit))
            }
            Body::File(path) => {
                let file = tokio::fs::File::open(path).await?;
                Box::pin(BufReader::with_capacity(64 * 1024, file).take(limit))
            }
        };
        Ok(Self::from_reader(reader, mode))
    }

    pub fn from_reader(reader: Pin<Box<dyn AsyncRead + Send>>, mode: Mode) -> BlockSource {
        BlockSource {
            reader,
            mode,
            pending: Vec::new(),
            scratch: Vec::new(),
            eof: false,
        }
    }

    /// Appends the next block of at most `blksize` wire bytes to `out` and
    /// returns its length; shorter only at the end (0 when the data ends
    /// exactly on a block boundary). Appending to the caller's buffer lets a
    /// transfer build each DATA packet in place, with no allocation per block.
    pub async fn append_block(&mut self, out: &mut Vec<u8>, blksize: usize) -> io::Result<usize> {
        if self.mode == Mode::Octet && self.pending.is_empty() {
            // Octet mode needs no conversion: read straight into the packet.
            let start = out.len();
            out.resize(start + blksize, 0);
            let mut filled = 0;
            while filled < blksize && !self.eof {
                match self.reader.read(&mut out[start + filled..]).await {
                    Ok(0) => self.eof = true,
                    Ok(read) => filled += read,
                    Err(error) => {
                        out.truncate(start);
                        return Err(error);
                    }
                }
            }
            out.truncate(start + filled);
            return Ok(filled);
        }
        while self.pending.len() < blksize && !self.eof {
            self.scratch.resize(blksize - self.pending.len(), 0);
            let read = self.reader.read(&mut self.scratch).await?;
            if read == 0 {
                self.eof = true;
            }
            match self.mode {
                Mode::Octet => self.pending.extend_from_slice(&self.scratch[..read]),
                Mode::Netascii => netascii::encode_into(&self.scratch[..read], &mut self.pending),
            }
        }
        let take = blksize.min(self.pending.len());
        out.extend(self.pending.drain(..take));
        Ok(take)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(bytes: &[u8], truncate: Option<u64>) -> ServedFile {
        ServedFile {
            path: "f".into(),
            body: Body::Bytes(Arc::new(bytes.to_vec())),
            size: bytes.len() as u64,
            delay: None,
            truncate,
            phone: None,
        }
    }

    async fn blocks(served: &ServedFile, mode: Mode, blksize: usize) -> Vec<Vec<u8>> {
        let mut source = BlockSource::open(served, mode).await.unwrap();
        let mut out = Vec::new();
        loop {
            // A buffer that already holds bytes (a packet header) keeps them.
            let mut block = b"head".to_vec();
            let len = source.append_block(&mut block, blksize).await.unwrap();
            assert_eq!(block.drain(..4).collect::<Vec<_>>(), b"head");
            assert_eq!(block.len(), len);
            let last = block.len() < blksize;
            out.push(block);
            if last {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn exact_multiple_ends_with_empty_block() {
        let got = blocks(&served(&[1; 16], None), Mode::Octet, 8).await;
        assert_eq!(got, vec![vec![1; 8], vec![1; 8], vec![]]);
    }

    #[tokio::test]
    async fn truncate_cuts_the_stream() {
        let got = blocks(&served(&[2; 100], Some(10)), Mode::Octet, 8).await;
        assert_eq!(got, vec![vec![2; 8], vec![2; 2]]);
    }

    #[tokio::test]
    async fn netascii_expansion_spills_into_next_block() {
        let got = blocks(&served(b"abc\n\n\ndef", None), Mode::Netascii, 4).await;
        assert_eq!(got.concat(), b"abc\r\n\r\n\r\ndef");
        assert!(got[..got.len() - 1].iter().all(|b| b.len() == 4));
    }

    #[tokio::test]
    async fn file_on_disk_is_streamed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fw.bin");
        let content: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let served = ServedFile {
            path: "fw.bin".into(),
            body: Body::File(path),
            size: 5000,
            delay: None,
            truncate: None,
            phone: None,
        };
        assert_eq!(blocks(&served, Mode::Octet, 512).await.concat(), content);
    }
}
