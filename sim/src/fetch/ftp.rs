//! Passive-mode FTP download (RFC 959): USER/PASS, TYPE I, SIZE, PASV, RETR.
//! Written here rather than with an FTP crate because both the control and
//! the data connection must leave from the phone's own address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::http::connect;
use super::{FetchError, Fetcher, ServerUrl};

struct Control {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

/// One reply: code and the text of its last line (multi-line replies `123-…` end with `123 …`).
async fn reply(reader: &mut BufReader<OwnedReadHalf>) -> Result<(u16, String), FetchError> {
    let mut first_code: Option<String> = None;
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .await
            .map_err(|e| FetchError::Failed(format!("FTP control: {e}")))?;
        if n == 0 {
            return Err(FetchError::Failed(
                "FTP server closed the control connection".into(),
            ));
        }
        let line = line.trim_end().to_owned();
        if line.len() < 3 || !line.is_char_boundary(3) {
            continue;
        }
        let code = &line[..3];
        match &first_code {
            None if line.as_bytes().get(3) == Some(&b'-') => first_code = Some(code.to_owned()),
            Some(c) if !(code == c && line.as_bytes().get(3) == Some(&b' ')) => {}
            _ => {
                let number = code
                    .parse()
                    .map_err(|_| FetchError::Failed(format!("FTP: bad reply `{line}`")))?;
                return Ok((number, line[3..].trim().to_owned()));
            }
        }
    }
}

impl Control {
    async fn command(&mut self, text: &str) -> Result<(u16, String), FetchError> {
        self.writer
            .write_all(format!("{text}\r\n").as_bytes())
            .await
            .map_err(|e| FetchError::Failed(format!("FTP control: {e}")))?;
        reply(&mut self.reader).await
    }
}

/// `227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)`.
pub fn parse_pasv(text: &str) -> Option<SocketAddr> {
    let start = text.find('(')?;
    let end = text[start..].find(')')? + start;
    let numbers: Vec<u8> = text[start + 1..end]
        .split(',')
        .map(|n| n.trim().parse().ok())
        .collect::<Option<_>>()?;
    if numbers.len() != 6 {
        return None;
    }
    let ip = Ipv4Addr::new(numbers[0], numbers[1], numbers[2], numbers[3]);
    Some(SocketAddr::new(
        IpAddr::V4(ip),
        u16::from(numbers[4]) << 8 | u16::from(numbers[5]),
    ))
}

fn expect(step: &str, (code, text): (u16, String), ok: &[u16]) -> Result<(), FetchError> {
    if ok.contains(&code) {
        Ok(())
    } else if code == 550 {
        Err(FetchError::NotFound(format!("FTP {code} {text}")))
    } else {
        Err(FetchError::Failed(format!("FTP {step}: {code} {text}")))
    }
}

pub async fn get(fetcher: &Fetcher, url: &ServerUrl) -> Result<Vec<u8>, FetchError> {
    let u = url.url();
    let host = u.host_str().unwrap_or_default().to_owned();
    let port = u.port().unwrap_or(fetcher.ports.ftp);
    let stream = connect(fetcher, &host, port).await?;
    let server_ip = stream
        .peer_addr()
        .map_err(|e| FetchError::Failed(e.to_string()))?
        .ip();
    let (read, writer) = stream.into_split();
    let mut control = Control {
        reader: BufReader::new(read),
        writer,
    };
    expect("greeting", reply(&mut control.reader).await?, &[220])?;
    let user = if u.username().is_empty() {
        "anonymous"
    } else {
        u.username()
    };
    let (code, text) = control.command(&format!("USER {user}")).await?;
    if code == 331 {
        let password = u.password().unwrap_or("phone@");
        expect(
            "PASS",
            control.command(&format!("PASS {password}")).await?,
            &[230, 202],
        )?;
    } else {
        expect("USER", (code, text), &[230])?;
    }
    expect("TYPE", control.command("TYPE I").await?, &[200])?;
    let path = url.path();
    let size = match control.command(&format!("SIZE {path}")).await? {
        (213, text) => text.trim().parse::<u64>().ok(),
        (550, text) => return Err(FetchError::NotFound(format!("FTP 550 {text}"))),
        _ => None,
    };
    let (code, text) = control.command("PASV").await?;
    expect("PASV", (code, text.clone()), &[227])?;
    let mut data_addr = parse_pasv(&text)
        .ok_or_else(|| FetchError::Failed(format!("FTP: cannot read PASV reply `{text}`")))?;
    if data_addr.ip().is_unspecified() {
        data_addr.set_ip(server_ip);
    }
    let mut data_stream = connect(fetcher, &data_addr.ip().to_string(), data_addr.port()).await?;
    expect(
        "RETR",
        control.command(&format!("RETR {path}")).await?,
        &[125, 150],
    )?;
    let mut data = Vec::new();
    data_stream
        .read_to_end(&mut data)
        .await
        .map_err(|e| FetchError::Failed(format!("FTP data: {e}")))?;
    drop(data_stream);
    let done = reply(&mut control.reader).await?;
    let _ = control.command("QUIT").await;
    if let Some(expected) = size {
        if expected != data.len() as u64 {
            return Err(FetchError::Truncated {
                got: data.len() as u64,
                expected,
            });
        }
    }
    expect("transfer", done, &[226, 250])?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("Entering Passive Mode (127,0,0,1,195,80)", Some("127.0.0.1:50000"))]
    #[case("Entering Passive Mode (198,18,0,1,0,21).", Some("198.18.0.1:21"))]
    #[case("Entering Passive Mode (1,2,3)", None)]
    #[case("nothing", None)]
    fn pasv_replies(#[case] text: &str, #[case] expected: Option<&str>) {
        assert_eq!(parse_pasv(text), expected.map(|e| e.parse().unwrap()));
    }
}
