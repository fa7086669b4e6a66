//! A small blocking HTTP/1.1 client for tests: one request per connection, chunked bodies
//! decoded, and streamed bodies read event by event with the time each arrived.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text()))
    }

    /// The `data:` payloads of an SSE body, in order.
    pub fn sse_data(&self) -> Vec<String> {
        sse_data(&self.text())
    }
}

/// The `data:` payloads of SSE text.
pub fn sse_data(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d).to_string())
        .collect()
}

/// A request to send.
pub struct HttpRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: Vec<(&'a str, String)>,
    pub body: Vec<u8>,
}

impl<'a> HttpRequest<'a> {
    pub fn get(path: &'a str) -> Self {
        HttpRequest {
            method: "GET",
            path,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn post_json(path: &'a str, body: &serde_json::Value) -> Self {
        HttpRequest {
            method: "POST",
            path,
            headers: vec![("content-type", "application/json".to_string())],
            body: serde_json::to_vec(body).unwrap(),
        }
    }

    pub fn bearer(mut self, key: &str) -> Self {
        self.headers
            .push(("authorization", format!("Bearer {key}")));
        self
    }

    pub fn header(mut self, name: &'a str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }

    pub fn raw_body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    fn write_to(&self, stream: &mut impl Write, addr: SocketAddr) -> std::io::Result<()> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
            self.method,
            self.path,
            self.body.len()
        );
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(&self.body)?;
        stream.flush()
    }

    /// Sends and reads the whole response (at most `timeout`).
    pub fn send(&self, addr: SocketAddr, timeout: Duration) -> std::io::Result<HttpResponse> {
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        self.write_to(&mut stream, addr)?;
        read_response(BufReader::new(stream))
    }

    /// Like [`HttpRequest::send`], over HTTPS (HTTP/1.1), trusting only the CA in `ca_pem`.
    pub fn send_tls(
        &self,
        addr: SocketAddr,
        ca_pem: &std::path::Path,
        timeout: Duration,
    ) -> std::io::Result<HttpResponse> {
        let config = tls_client_config(ca_pem, &[b"http/1.1"])?;
        let name = rustls_pki_types::ServerName::from(addr.ip());
        let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
            .map_err(std::io::Error::other)?;
        let tcp = TcpStream::connect_timeout(&addr, timeout)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        self.write_to(&mut stream, addr)?;
        read_response(BufReader::new(stream))
    }
}

/// A rustls client config that trusts only the CA certificate(s) in `ca_pem`, offering `alpn`.
pub fn tls_client_config(
    ca_pem: &std::path::Path,
    alpn: &[&[u8]],
) -> std::io::Result<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        rustls_pki_types::CertificateDer::pem_file_iter(ca_pem).map_err(std::io::Error::other)?
    {
        roots
            .add(cert.map_err(std::io::Error::other)?)
            .map_err(std::io::Error::other)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

fn read_response(mut reader: impl BufRead) -> std::io::Result<HttpResponse> {
    let (status, headers) = read_head(&mut reader)?;
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    let mut body = Vec::new();
    if chunked {
        while let Some(chunk) = read_chunk(&mut reader)? {
            body.extend_from_slice(&chunk);
        }
    } else if let Some(len) = length {
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    } else {
        reader.read_to_end(&mut body)?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

impl HttpRequest<'_> {
    /// Sends and returns the response head with a reader for a chunked (streamed) body.
    pub fn stream(&self, addr: SocketAddr, timeout: Duration) -> std::io::Result<StreamedResponse> {
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        self.write_to(&mut stream, addr)?;
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader)?;
        Ok(StreamedResponse {
            status,
            headers,
            reader,
            sent: Instant::now(),
        })
    }
}

/// A response whose chunked body is read as it arrives.
pub struct StreamedResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    pub sent: Instant,
}

impl StreamedResponse {
    /// The next chunk of the body and when it arrived; `None` at the end.
    pub fn next_chunk(&mut self) -> std::io::Result<Option<(Vec<u8>, Instant)>> {
        Ok(read_chunk(&mut self.reader)?.map(|c| (c, Instant::now())))
    }

    /// Every remaining chunk with its arrival time.
    pub fn collect(mut self) -> std::io::Result<Vec<(Vec<u8>, Instant)>> {
        let mut out = Vec::new();
        while let Some(c) = self.next_chunk()? {
            out.push(c);
        }
        Ok(out)
    }

    /// Closes the connection, as a client that gives up would.
    pub fn abort(self) {
        let _ = self.reader.into_inner().shutdown(std::net::Shutdown::Both);
    }
}

fn read_head(reader: &mut impl BufRead) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok((status, headers))
}

fn read_chunk(reader: &mut impl BufRead) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
        .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
    if size == 0 {
        // Trailers, then the final CRLF.
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                break;
            }
        }
        return Ok(None);
    }
    let mut chunk = vec![0u8; size];
    reader.read_exact(&mut chunk)?;
    let mut crlf = [0u8; 2];
    reader.read_exact(&mut crlf)?;
    Ok(Some(chunk))
}
