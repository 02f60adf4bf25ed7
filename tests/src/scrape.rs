//! Reads governor's HTTP endpoints over one kept-alive connection, so that
//! scraping adds no TCP connections of its own to what the test measures.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

pub struct Scraper {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

/// A series key as the prometheus crate renders it: labels sorted by name.
pub fn series(name: &str, labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return name.to_owned();
    }
    let mut labels = labels.to_vec();
    labels.sort_unstable();
    let body: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", body.join(","))
}

/// Parses the text format into `series → value`.
pub fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

impl Scraper {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, conn: None }
    }

    /// GET `path`; `None` when the daemon does not answer (yet).
    pub fn get(&mut self, path: &str) -> Option<(u16, String)> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            self.conn = Some(BufReader::new(s));
        }
        let result = self.request(path);
        if result.is_none() {
            self.conn = None;
        }
        result
    }

    fn request(&mut self, path: &str) -> Option<(u16, String)> {
        let conn = self.conn.as_mut()?;
        write!(conn.get_mut(), "GET {path} HTTP/1.1\r\nHost: governor\r\n\r\n").ok()?;
        let mut line = String::new();
        conn.read_line(&mut line).ok()?;
        let status: u16 = line.split(' ').nth(1)?.parse().ok()?;
        let mut length = None;
        loop {
            line.clear();
            conn.read_line(&mut line).ok()?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse::<usize>().ok();
            }
        }
        let mut body = vec![0; length?];
        conn.read_exact(&mut body).ok()?;
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    }

    pub fn metrics(&mut self) -> HashMap<String, f64> {
        let (status, body) = self.get("/metrics").expect("governor answers /metrics");
        assert_eq!(status, 200, "/metrics: {body}");
        parse(&body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_keys_match_the_exposition_format() {
        assert_eq!(series("a_total", &[]), "a_total");
        assert_eq!(
            series("a_total", &[("endpoint", "1.2.3.4:5"), ("direction", "sent")]),
            r#"a_total{direction="sent",endpoint="1.2.3.4:5"}"#
        );
        let m = parse("# HELP a x\na_total{direction=\"sent\",endpoint=\"1.2.3.4:5\"} 200\nb 1.5\n");
        assert_eq!(m[r#"a_total{direction="sent",endpoint="1.2.3.4:5"}"#].to_string(), "200");
        assert_eq!(m["b"].to_string(), "1.5");
    }
}
