//! PROXY protocol v2: the header an AWS Network Load Balancer puts in front
//! of each connection when its target group asks for it. Behind a TLS
//! listener the balancer opens its own connection to the bridge, so the
//! socket's peer is the balancer; the header names the client, whom the
//! per-IP connect limits and the logs are about.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12 bytes every v2 header starts with.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest address block accepted: the addresses and the TLVs AWS adds (a
/// VPC endpoint id), with room to spare.
const MAX_LEN: usize = 1024;

/// Why a connection's header was refused (the connection is dropped).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY protocol v2 header")]
    Missing,
    #[error("PROXY header of {0} bytes, over the limit")]
    TooLong(usize),
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the header off `stream`: the client's address for a proxied
/// connection, `None` for the balancer's own (a health check: `LOCAL`) or an
/// address family without one.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyError> {
    let mut fixed = [0u8; 16];
    stream.read_exact(&mut fixed).await?;
    if fixed[..12] != SIGNATURE || fixed[12] >> 4 != 2 {
        return Err(ProxyError::Missing);
    }
    let command = fixed[12] & 0x0f;
    let family = fixed[13];
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > MAX_LEN {
        return Err(ProxyError::TooLong(len));
    }
    let mut block = vec![0u8; len];
    stream.read_exact(&mut block).await?;
    if command != 1 {
        return Ok(None); // LOCAL: the balancer speaking for itself
    }
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    Ok(match family {
        // TCP over IPv4: source, destination, source port, destination port.
        0x11 if len >= 12 => {
            let ip = Ipv4Addr::new(block[0], block[1], block[2], block[3]);
            Some(SocketAddr::new(IpAddr::V4(ip), port(8)))
        }
        // TCP over IPv6.
        0x21 if len >= 36 => {
            let octets: [u8; 16] = block[..16].try_into().unwrap_or([0; 16]);
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                port(32),
            ))
        }
        _ => None,
    })
}

/// A v2 header for `client`, as a balancer writes it (for tests).
pub fn header_for(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.push(0x21); // version 2, PROXY
    match (client, server) {
        (SocketAddr::V4(c), SocketAddr::V4(s)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&c.ip().octets());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&c.port().to_be_bytes());
            out.extend_from_slice(&s.port().to_be_bytes());
        }
        (c, s) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                IpAddr::V6(ip) => ip,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(c).octets());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&c.port().to_be_bytes());
            out.extend_from_slice(&s.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
        let mut reader = bytes;
        read_header(&mut reader).await
    }

    #[tokio::test]
    async fn headers_name_the_client_and_anything_else_is_refused() {
        let server: SocketAddr = "10.0.0.5:8080".parse().unwrap();
        for client in ["203.0.113.7:51000", "[2001:db8::7]:51000"] {
            let client: SocketAddr = client.parse().unwrap();
            let header = header_for(client, server);
            assert_eq!(parse(&header).await.unwrap(), Some(client));
        }
        // LOCAL (a health check): no client address.
        let mut local = SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local).await.unwrap(), None);
        // A client that speaks HTTP straight away, a v1 header, a huge block.
        assert!(matches!(
            parse(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").await,
            Err(ProxyError::Missing)
        ));
        assert!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n").await.is_err());
        let mut huge = SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(
            parse(&huge).await,
            Err(ProxyError::TooLong(65535))
        ));
        // Cut short.
        assert!(matches!(
            parse(&header_for("1.2.3.4:5".parse().unwrap(), server)[..20]).await,
            Err(ProxyError::Io(_))
        ));
    }
}
