//! A real registry for tests: Debian's `docker-registry` (distribution 2.x) serving a temporary
//! directory on 127.0.0.1 at a free port, optionally behind htpasswd basic auth or bearer-token
//! auth (with a small token server here, signing RS256 JWTs through the `openssl` CLI), plus
//! `skopeo` helpers to push OCI layouts into it. Everything is stopped when the value is dropped.
//!
//! Depends only on std and `tempfile`, so builder tests can include it with `#[path]`.
//! Missing tools make the calling test fail (never skip).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The registry binary Debian installs.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A running registry.
pub struct Registry {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    creds: Option<(String, String)>,
    token_server: Option<TokenServer>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum AuthMode {
    Open,
    Htpasswd,
    Token,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl Registry {
    /// Starts an open registry.
    pub fn start() -> Registry {
        Registry::launch(None, AuthMode::Open)
    }

    /// Starts a registry that requires `user`/`pass` (bcrypt htpasswd, made with `htpasswd -Bbn`).
    pub fn start_with_auth(user: &str, pass: &str) -> Registry {
        Registry::launch(
            Some((user.to_string(), pass.to_string())),
            AuthMode::Htpasswd,
        )
    }

    /// Starts a registry that wants bearer tokens, from a token server that gives them only to
    /// `user`/`pass` (as Docker Hub does for private repositories).
    pub fn start_with_token_auth(user: &str, pass: &str) -> Registry {
        Registry::launch(Some((user.to_string(), pass.to_string())), AuthMode::Token)
    }

    fn launch(creds: Option<(String, String)>, mode: AuthMode) -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: install Debian's docker-registry package"
        );
        let dir = tempfile::tempdir().expect("registry temp dir");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("storage dir");
        let mut token_server = None;
        let auth = match (&creds, mode) {
            (Some((u, p)), AuthMode::Htpasswd) => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", u, p])
                    .output()
                    .expect("run htpasswd (apache2-utils)");
                assert!(out.status.success(), "htpasswd failed");
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, &out.stdout).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: hyperpod-test\n    path: {}\n",
                    file.display()
                )
            }
            (Some((u, p)), AuthMode::Token) => {
                let ts = TokenServer::start(dir.path(), u, p);
                let auth = format!(
                    "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {SERVICE}\n    \
                     issuer: {ISSUER}\n    rootcertbundle: {}\n",
                    ts.port,
                    ts.cert.display()
                );
                token_server = Some(ts);
                auth
            }
            _ => String::new(),
        };
        // A few tries in case another process takes the port between probe and bind.
        for _ in 0..3 {
            let port = free_port();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                     http:\n  addr: 127.0.0.1:{port}\n{auth}",
                    storage.display()
                ),
            )
            .expect("write registry config");
            let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
            let mut child = Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start docker-registry");
            if wait_ready(&mut child, port, Duration::from_secs(20)) {
                return Registry {
                    child: Some(child),
                    port,
                    dir,
                    creds,
                    token_server,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default();
        panic!("docker-registry did not answer on /v2/: {log}");
    }

    /// The HTTP status of an anonymous GET of `path`, or `None` if nothing answers.
    pub fn get_status(&self, path: &str) -> Option<u16> {
        http_status(self.port, path)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's storage root (for tampering tests).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps a blob's bytes (`sha256:<hex>` digest).
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Copies `src` (any skopeo source, e.g. `oci:DIR:REF`) to `NAME:TAG` in this registry;
    /// `all` copies every platform of an index.
    pub fn push(&self, src: &str, name_tag: &str, all: bool) {
        self.push_with(src, name_tag, if all { &["--all"] } else { &[] });
    }

    /// Like [`push`](Self::push) with extra `skopeo copy` flags (`--format v2s2`, `--all`...).
    pub fn push_with(&self, src: &str, name_tag: &str, extra: &[&str]) {
        let dest = format!("docker://{}/{name_tag}", self.host());
        let mut cmd = Command::new("skopeo");
        cmd.args(["--insecure-policy", "copy", "--dest-tls-verify=false"]);
        cmd.args(extra);
        if let Some((u, p)) = &self.creds {
            cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
        }
        cmd.arg("--quiet").arg(src).arg(&dest);
        let out = cmd.output().expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo copy {src} {dest} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kills the registry (idempotent).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(ts) = self.token_server.take() {
            ts.stop();
        }
    }
}

/// Polls `GET /v2/` until it answers 200 or 401, or the process exits.
fn wait_ready(child: &mut Child, port: u16, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Some(200 | 401) = http_status(port, "/v2/") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.split(' ').nth(1)?.parse().ok()
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `skopeo copy` between two local transports (e.g. `oci:DIR:REF` to
/// `docker-archive:FILE:NAME:TAG`).
pub fn skopeo_copy(src: &str, dest: &str) {
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--quiet", src, dest])
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo copy {src} {dest} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const SERVICE: &str = "hyperpod-registry";
const ISSUER: &str = "hyperpod-test-issuer";

/// A minimal token server: `GET /token?service=..&scope=..` with the right basic credentials
/// gets a JWT granting the scopes asked for; anything else gets 401.
/// Every file under `dir` (a blob cache, say), relative, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// A self-signed certificate for `cn` and its key, made by `openssl req` as `DIR/NAME.crt` and
/// `DIR/NAME.key`; returns (key, certificate).
pub fn self_signed(dir: &Path, name: &str, cn: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.crt"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .arg("-subj")
        .arg(format!("/CN={cn}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (key, cert)
}

struct TokenServer {
    port: u16,
    cert: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    fn start(dir: &Path, user: &str, pass: &str) -> TokenServer {
        let (key, cert) = self_signed(dir, "token", "hyperpod-test-token");
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .expect("run openssl");
        assert!(der.status.success());
        let x5c = b64(&der.stdout, false);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let expected = format!("Basic {}", b64(format!("{user}:{pass}").as_bytes(), false));
        let (stop2, user) = (stop.clone(), user.to_string());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    serve_token(c, &expected, &user, &key, &x5c);
                }
            }
        });
        TokenServer {
            port,
            cert,
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_token(mut c: TcpStream, expected: &str, user: &str, key: &Path, x5c: &str) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
        if req.len() > 64 * 1024 {
            return;
        }
    }
    let req = String::from_utf8_lossy(&req);
    let target = req.split(' ').nth(1).unwrap_or("");
    let authorized = req
        .lines()
        .filter_map(|l| l.split_once(':'))
        .any(|(k, v)| k.eq_ignore_ascii_case("authorization") && v.trim() == expected);
    let (status, body) = if !authorized {
        (
            "401 Unauthorized",
            r#"{"details":"bad credentials"}"#.to_string(),
        )
    } else {
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let mut access = Vec::new();
        for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
            if k != "scope" {
                continue;
            }
            let v = url_decode(v);
            let mut parts = v.rsplitn(2, ':');
            let (actions, rest) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if let Some((kind, name)) = rest.split_once(':') {
                let actions: Vec<String> = actions.split(',').map(|a| format!("\"{a}\"")).collect();
                access.push(format!(
                    r#"{{"type":"{kind}","name":"{name}","actions":[{}]}}"#,
                    actions.join(",")
                ));
            }
        }
        let token = sign_jwt(user, &access.join(","), key, x5c);
        (
            "200 OK",
            format!(r#"{{"token":"{token}","access_token":"{token}","expires_in":300}}"#),
        )
    };
    let _ = write!(
        c,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn sign_jwt(user: &str, access: &str, key: &Path, x5c: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let header = format!(r#"{{"typ":"JWT","alg":"RS256","x5c":["{x5c}"]}}"#);
    let claims = format!(
        r#"{{"iss":"{ISSUER}","sub":"{user}","aud":"{SERVICE}","exp":{},"nbf":{},"iat":{},"jti":"{now}","access":[{access}]}}"#,
        now + 300,
        now - 60,
        now - 60
    );
    let input = format!(
        "{}.{}",
        b64(header.as_bytes(), true),
        b64(claims.as_bytes(), true)
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run openssl dgst");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write to openssl");
    let out = child.wait_with_output().expect("openssl dgst");
    assert!(out.status.success(), "openssl dgst -sign failed");
    format!("{input}.{}", b64(&out.stdout, true))
}

/// Base64, standard (padded) or URL-safe (unpadded).
fn b64(data: &[u8], url: bool) -> String {
    let table: &[u8; 64] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(table[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
        if !url {
            for _ in chunk.len()..3 {
                out.push('=');
            }
        }
    }
    out
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
