//! One HTTP request in, one answer out, with no I/O: a static file,
//! `/healthz`, an error status, or the WebSocket upgrade of `/ws` (RFC 6455
//! section 4.2). Requests are parsed by `httparse`; the answer's bytes are
//! written by the connection (`conn.rs`).

use super::{assets, WebPolicy};

/// Longest request accepted, headers included. Browsers send well under
/// 2 KiB to a page like this; a stranger's connection holds no more.
pub const MAX_REQUEST: usize = 8 * 1024;

/// Headers parsed per request; more gets 431.
const MAX_HEADERS: usize = 48;

/// The page may load only its own scripts, styles and socket: no inline
/// script, no framing, no forms posted anywhere. `connect-src 'self'`
/// covers `ws://` and `wss://` to the same host (CSP level 3).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The answer to a browser turned away for lack of room (`--max-clients`,
/// `--max-per-ip`): sent before its request is read, which HTTP allows.
pub const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
    Content-Length: 5\r\nRetry-After: 5\r\nConnection: close\r\n\r\nbusy\n";

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Not all of it has arrived yet.
    Partial,
    /// Switch to WebSocket: these bytes (the 101 response) first. `used`
    /// bytes were the request; anything after them is already frames.
    Upgrade { response: Vec<u8>, used: usize },
    /// Write this response and close.
    Respond(Vec<u8>),
}

/// Decides what `request` (the bytes read so far) gets.
pub fn answer(request: &[u8], policy: &WebPolicy) -> Answer {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let used = match parsed.parse(request) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) if request.len() >= MAX_REQUEST => {
            return Answer::Respond(status(431, "Request Header Fields Too Large", ""));
        }
        Ok(httparse::Status::Partial) => return Answer::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Answer::Respond(status(431, "Request Header Fields Too Large", ""));
        }
        Err(_) => return Answer::Respond(status(400, "Bad Request", "")),
    };
    let method = parsed.method.unwrap_or("");
    // Without a query string: the page never uses one, and `/?x` is still `/`.
    let path = parsed.path.unwrap_or("").split('?').next().unwrap_or("");
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    if method != "GET" && method != "HEAD" {
        return Answer::Respond(status(405, "Method Not Allowed", "Allow: GET, HEAD\r\n"));
    }
    let body_wanted = method == "GET";
    match path {
        "/ws" => upgrade(&header, policy, used),
        "/healthz" => Answer::Respond(file(
            "text/plain; charset=utf-8",
            b"ok\n",
            "no-store",
            body_wanted,
        )),
        _ => match assets::find(path) {
            // no-cache: a browser asks again (cheaply) after an upgrade
            // of natterd, so the page never runs against another version.
            Some(asset) => Answer::Respond(file(
                asset.content_type,
                asset.body,
                "no-cache",
                body_wanted,
            )),
            None => Answer::Respond(status(404, "Not Found", "")),
        },
    }
}

/// The upgrade of `/ws`, or why not.
fn upgrade<'h>(
    header: &impl Fn(&str) -> Option<&'h str>,
    policy: &WebPolicy,
    used: usize,
) -> Answer {
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("Upgrade", "websocket") || !has_token("Connection", "upgrade") {
        return Answer::Respond(status(
            426,
            "Upgrade Required",
            "Upgrade: websocket\r\nConnection: Upgrade\r\n",
        ));
    }
    if header("Sec-WebSocket-Version") != Some("13") {
        return Answer::Respond(status(
            426,
            "Upgrade Required",
            "Sec-WebSocket-Version: 13\r\n",
        ));
    }
    let Some(key) = header("Sec-WebSocket-Key").filter(|k| is_websocket_key(k)) else {
        return Answer::Respond(status(400, "Bad Request", ""));
    };
    if let Some(origin) = header("Origin") {
        if !origin_allowed(origin, header("Host"), policy) {
            return Answer::Respond(status(403, "Forbidden", ""));
        }
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    Answer::Upgrade {
        response: response.into_bytes(),
        used,
    }
}

/// Whether `key` is what RFC 6455 asks for: 16 bytes in base64 (24
/// characters, the last two `==`, so the 22nd may carry only 2 bits).
pub fn is_websocket_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && b[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
        && matches!(b[21], b'A' | b'Q' | b'g' | b'w')
        && &b[22..] == b"=="
}

/// Whether a page at `origin` may open a socket: one listed in
/// `--web-origin`, or, with none listed, the page natterd served itself
/// (its origin names the host the browser asked for). A page elsewhere
/// must not be able to use a visitor's browser to talk to natterd.
pub fn origin_allowed(origin: &str, host: Option<&str>, policy: &WebPolicy) -> bool {
    if !policy.origins.is_empty() {
        return policy
            .origins
            .iter()
            .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin));
    }
    let Some(host) = host else {
        return false;
    };
    let own = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    own.is_some_and(|h| h.eq_ignore_ascii_case(host))
}

/// A response with a body that closes the connection.
fn file(content_type: &str, body: &[u8], cache: &str, body_wanted: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: {cache}\r\nContent-Security-Policy: {CONTENT_SECURITY_POLICY}\r\n\
         X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if body_wanted {
        out.extend_from_slice(body);
    }
    out
}

/// An error status with its reason as the body; `extra` are header lines.
fn status(code: u16, reason: &str, extra: &str) -> Vec<u8> {
    let body = format!("{code} {reason}\n");
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\n{extra}Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request(path: &str, extra: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: chat.example:8080\r\n{extra}\r\n").into_bytes()
    }

    fn ws(extra: &str) -> Vec<u8> {
        request(
            "/ws",
            &format!(
                "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}"
            ),
        )
    }

    fn status_of(answer: &Answer) -> String {
        let bytes = match answer {
            Answer::Respond(b) => b,
            Answer::Upgrade { response, .. } => response,
            Answer::Partial => return "partial".into(),
        };
        let text = String::from_utf8_lossy(bytes);
        text.lines().next().unwrap_or("").to_string()
    }

    #[test]
    fn the_upgrade_answers_the_rfc_sample_key() {
        let req = ws("Origin: http://chat.example:8080\r\n");
        let answer = answer(&req, &WebPolicy::default());
        let Answer::Upgrade { response, used } = answer else {
            panic!("no upgrade: {answer:?}");
        };
        assert_eq!(used, req.len());
        let text = String::from_utf8(response).unwrap();
        // RFC 6455 section 1.3's worked example.
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn handshake_errors_get_their_status() {
        let p = WebPolicy::default();
        let no_upgrade = request(
            "/ws",
            &format!("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n"),
        );
        assert!(status_of(&answer(&no_upgrade, &p)).starts_with("HTTP/1.1 426"));
        let v8 = String::from_utf8(ws(""))
            .unwrap()
            .replace("Version: 13", "Version: 8");
        assert!(status_of(&answer(v8.as_bytes(), &p)).starts_with("HTTP/1.1 426"));
        let bad_key = String::from_utf8(ws("")).unwrap().replace(KEY, "c2hvcnQ=");
        assert!(status_of(&answer(bad_key.as_bytes(), &p)).starts_with("HTTP/1.1 400"));
        let post = b"POST / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(status_of(&answer(post, &p)).starts_with("HTTP/1.1 405"));
        assert!(status_of(&answer(&request("/nope", ""), &p)).starts_with("HTTP/1.1 404"));
        assert_eq!(
            status_of(&answer(b"GET / HTTP/1.1\r\nHost:", &p)),
            "partial"
        );
        assert!(status_of(&answer(b"\x01\x02 garbage\r\n\r\n", &p)).starts_with("HTTP/1.1 400"));
        let huge = vec![b'a'; MAX_REQUEST];
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.extend_from_slice(&huge);
        assert!(status_of(&answer(&long, &p)).starts_with("HTTP/1.1 431"));
    }

    #[test]
    fn only_the_pages_own_origin_or_a_listed_one_may_connect() {
        let own = WebPolicy::default();
        let host = Some("chat.example:8080");
        assert!(origin_allowed("http://chat.example:8080", host, &own));
        assert!(origin_allowed("https://chat.example:8080", host, &own));
        assert!(!origin_allowed("http://evil.example", host, &own));
        assert!(!origin_allowed("http://chat.example:8080.evil", host, &own));
        assert!(!origin_allowed("null", host, &own));
        assert!(!origin_allowed("http://chat.example:8080", None, &own));
        let listed = WebPolicy {
            origins: vec!["https://chat.example/".into()],
            ..WebPolicy::default()
        };
        assert!(origin_allowed("https://chat.example", host, &listed));
        assert!(!origin_allowed("http://chat.example:8080", host, &listed));
        let evil = ws("Origin: http://evil.example\r\n");
        assert!(status_of(&answer(&evil, &own)).starts_with("HTTP/1.1 403"));
    }

    #[test]
    fn the_page_comes_with_its_type_cache_rule_and_policy() {
        let answer = answer(&request("/?x=1", ""), &WebPolicy::default());
        let Answer::Respond(bytes) = answer else {
            panic!("{answer:?}");
        };
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Type: text/html; charset=utf-8\r\n"));
        assert!(text.contains("Cache-Control: no-cache\r\n"));
        assert!(text.contains("script-src 'self';"));
        assert!(!text.contains("unsafe-inline"));
    }

    #[test]
    fn websocket_keys_are_sixteen_bytes_of_base64() {
        assert!(is_websocket_key(KEY));
        assert!(!is_websocket_key("dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!is_websocket_key("dGhlIHNhbXBsZSBub25jZR=="));
        assert!(!is_websocket_key("dGhlIHNhbXBsZSBub25j*Q=="));
    }
}
