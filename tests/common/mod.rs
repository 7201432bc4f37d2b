//! Test harness: a real switchyard daemon on loopback ports, and the real clients that
//! drive it (swaks, Python smtplib, raw sockets).
#![allow(dead_code)]

pub mod pki;
pub mod tools;
pub use tools::Tool;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// Gmail's domain-based verdict, the reply the seed's automation rule answers.
pub const GMAIL_5_7_26: &str = "5.7.26 This message does not have authentication information or fails to pass authentication checks (SPF or DKIM)";

/// A free loopback port (bound then released; the daemon binds it right after), taken
/// below the kernel's ephemeral range (32768-60999): outgoing connections — and the tests
/// make thousands — never take such a port between our check and the daemon's bind, as they
/// can take one the kernel handed out for port 0. Free for TCP and UDP (dnsmasq uses both).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    for _ in 0..1000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(n.wrapping_mul(7_919)) % 12_000) as u16;
        let free = TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if free {
            return port;
        }
    }
    panic!("no free loopback port between 20000 and 32000");
}

/// A running daemon with its own directory and ports.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub smtp: SocketAddr,
    pub http: SocketAddr,
    pub config: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Write a config (SMTP/HTTP ports and data_dir filled in, `extra` appended) and start.
    pub fn start(extra: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, extra)
    }

    /// Like [`Daemon::start`] in a given directory.
    pub fn start_in(dir: tempfile::TempDir, extra: &str) -> Daemon {
        Self::start_in_with_env(dir, extra, &[])
    }

    /// Like [`Daemon::start`] with extra environment variables.
    pub fn start_with_env(extra: &str, env: &[(&str, &str)]) -> Daemon {
        Self::start_in_with_env(tempfile::tempdir().unwrap(), extra, env)
    }

    fn start_in_with_env(dir: tempfile::TempDir, extra: &str, env: &[(&str, &str)]) -> Daemon {
        let smtp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.path().join("switchyard.toml");
        let smtp_section = if extra.contains("[smtp]") {
            extra.replace("[smtp]", &format!("[smtp]\nlisten = [\"{smtp}\"]"))
        } else {
            format!("[smtp]\nlisten = [\"{smtp}\"]\n\n{extra}")
        };
        // Never the system resolver: a test's DNS is dnsmasq on loopback, or nothing (port 9
        // refuses at once, so lookups fail fast and mail stays queued).
        let dns = if extra.contains("[dns]") {
            ""
        } else {
            "[dns]\nnameservers = [\"127.0.0.1:9\"]\n"
        };
        // An [http] table in `extra` gets the listen address; otherwise one is added.
        let (http_section, smtp_section) = if smtp_section.contains("[http]") {
            (
                String::new(),
                smtp_section.replace("[http]", &format!("[http]\nlisten = \"{http}\"")),
            )
        } else {
            (format!("[http]\nlisten = \"{http}\"\n"), smtp_section)
        };
        let text = format!(
            "hostname = \"mta.test\"\ndata_dir = \"{}\"\n\n{http_section}\n{dns}\n{smtp_section}\n",
            dir.path().join("data").display()
        );
        std::fs::write(&config, text).unwrap();
        let mut d = Daemon {
            dir,
            smtp,
            http,
            config,
            child: None,
        };
        d.spawn_with_env(env);
        d
    }

    /// Start the process (again) on the same config and data.
    pub fn spawn(&mut self) {
        self.spawn_with_env(&[]);
    }

    /// Start the process (again) with extra environment variables.
    pub fn spawn_with_env(&mut self, env: &[(&str, &str)]) {
        let child = Command::new(BIN)
            .envs(env.iter().copied())
            .args(["serve", "--config"])
            .arg(&self.config)
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("daemon.log")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for_port(self.smtp, Duration::from_secs(20));
        wait_for_port(self.http, Duration::from_secs(20));
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("daemon running");
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().unwrap()
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// GET a path from the HTTP server: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.http, path)
    }

    /// GET a path and parse the JSON answer.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    /// Send a request with a JSON body: (status, body).
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        http_request(self.http, method, path, body)
    }

    /// The active suspensions, from the API.
    pub fn suspensions(&self) -> Vec<serde_json::Value> {
        self.get_json("/api/v1/suspensions")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Wait until the API lists `n` suspensions; returns them.
    pub fn wait_suspensions(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.suspensions();
            if s.len() == n {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} suspensions, expected {n}: {s:?}",
                s.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The value of an unlabelled metric, or of the series whose labels contain `labels`.
    pub fn metric(&self, name: &str, labels: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics");
        metric_value(&body, name, labels)
    }

    /// Wait until a metric reaches `value` (settlements reach the spool asynchronously).
    pub fn wait_metric(&self, name: &str, labels: &str, value: f64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.metric(name, labels);
            if v == Some(value) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{{{labels}}} is {v:?}, expected {value}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// All event-log records written so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        events_in(&self.dir.path().join("data/logs"))
    }

    /// Wait until `f` holds on the event log (the log thread writes asynchronously).
    pub fn wait_events(
        &self,
        what: &str,
        f: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        self.wait_events_within(what, Duration::from_secs(10), f)
    }

    /// [`Daemon::wait_events`] with a longer (or shorter) patience.
    pub fn wait_events_within(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        poll_until(what, timeout, || self.events(), f)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// All event-log records written so far in the log directory `dir`. Every whole line must
/// be a JSON record; a last line still being written is left for the next look.
pub fn events_in(dir: &Path) -> Vec<serde_json::Value> {
    loop {
        // A segment compressed (and removed) between listing and reading: look again.
        if let Some(events) = try_events_in(dir) {
            return events;
        }
    }
}

fn try_events_in(dir: &Path) -> Option<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    // Skip a compression under way: its temporary file, and the `.jsonl` once its `.zst`
    // is complete (both exist for a moment).
    files.retain(|f| {
        let name = f.display().to_string();
        !name.ends_with(".tmp") && !std::path::Path::new(&format!("{name}.zst")).exists()
    });
    for f in files {
        let text = if f.extension().is_some_and(|x| x == "zst") {
            let file = std::fs::File::open(&f).ok()?;
            String::from_utf8(zstd::decode_all(file).unwrap()).unwrap()
        } else {
            let mut text = std::fs::read_to_string(&f).ok()?;
            text.truncate(text.rfind('\n').map_or(0, |i| i + 1));
            text
        };
        out.extend(text.lines().map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("{}: {e}: {l:?}", f.display()))
        }));
    }
    Some(out)
}

/// Wait until something accepts on `addr`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal HTTP/1.1 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, None)
}

/// An HTTP/1.1 request with an optional JSON body, through `ureq` (chunked and compressed
/// answers alike): (status, body).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let request = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(body.unwrap_or("").to_string())
        .unwrap();
    let mut response = agent.run(request).unwrap();
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(256 << 20)
        .read_to_string()
        .unwrap_or_default();
    (status, text)
}

/// Find a sample in Prometheus text: `name{...labels...} value` or `name value`. `labels`
/// is `k="v"` pairs joined by commas, in any order.
pub fn metric_value(text: &str, name: &str, labels: &str) -> Option<f64> {
    let wanted: Vec<String> = labels
        .split("\",")
        .filter(|p| !p.is_empty())
        .map(|p| {
            if p.ends_with('"') {
                p.to_string()
            } else {
                format!("{p}\"")
            }
        })
        .collect();
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let matches = if labels.is_empty() {
            series == name
        } else {
            series.starts_with(&format!("{name}{{"))
                && wanted.iter().all(|w| series.contains(w.as_str()))
        };
        if matches {
            value.parse().ok()
        } else {
            None
        }
    })
}

/// Run a real command and capture its output.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    out
}

/// swaks against `addr` with extra arguments; returns (exit ok, transcript).
pub fn swaks(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    for tool in tools::swaks_needs(args) {
        tool.require();
    }
    let out = run(Command::new("swaks")
        .arg("--server")
        .arg(addr.to_string())
        .args(["--timeout", "20"])
        .args(args));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Run a Python script from `tests/py/` with arguments; returns (exit ok, stdout, stderr).
pub fn python(script: &str, args: &[String]) -> (bool, String, String) {
    Tool::Python.require();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let out = run(Command::new("python3").arg(path).args(args));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A Python server from tests/py (`script` with `args`) that prints "ready" once it
/// listens; panics with `what` if it does not start.
pub fn python_server(script: &str, args: &[std::ffi::OsString], what: &str) -> Child {
    Tool::Python.require();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let mut child = Command::new("python3")
        .arg(path)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3: {e}"));
    let mut ready = String::new();
    use std::io::BufRead;
    let _ = std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready);
    assert_eq!(ready.trim(), "ready", "{what}");
    child
}

/// `switchyard hash-password` with `password` on standard input: the hash it prints.
pub fn hash_password(password: &str) -> String {
    let mut child = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "hash-password failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A raw SMTP client over a socket, for input that no well-behaved client sends.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Connect and read the banner.
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut r = Raw {
            stream,
            buf: Vec::new(),
        };
        let banner = r.reply();
        assert!(banner.starts_with("220 "), "banner: {banner}");
        r
    }

    /// A client over a connected stream; nothing read yet (not even the banner).
    pub fn from_stream(stream: TcpStream) -> Raw {
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    /// Send bytes as they are.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Read one whole (possibly multi-line) reply; "" on EOF.
    pub fn reply(&mut self) -> String {
        let mut out = String::new();
        loop {
            let line = self.line();
            if line.is_empty() {
                return out;
            }
            out.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return out;
            }
        }
    }

    /// Read one line (with CRLF); "" on EOF.
    pub fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return String::from_utf8_lossy(&line).to_string();
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return String::new(),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Send a command line and read its reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }
}

/// A real receiving SMTP server (aiosmtpd, tests/py/sink.py) that records what it got.
pub struct Sink {
    pub port: u16,
    pub record: PathBuf,
    child: Child,
}

impl Sink {
    /// Start a sink on 127.0.0.1:`port` answering per `mode` (see sink.py); `tls` = (cert, key).
    pub fn start(port: u16, dir: &Path, mode: &str, tls: Option<(&Path, &Path)>) -> Sink {
        let record = dir.join(format!("sink-{port}.jsonl"));
        Tool::Aiosmtpd.require();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/sink.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .args(["--port", &port.to_string(), "--mode", mode, "--record"])
            .arg(&record)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((cert, key)) = tls {
            cmd.arg("--tls").arg(cert).arg(key);
        }
        let child = cmd.spawn().unwrap();
        wait_for_port(
            format!("127.0.0.1:{port}").parse().unwrap(),
            Duration::from_secs(20),
        );
        Sink {
            port,
            record,
            child,
        }
    }

    /// Every DATA the sink has seen.
    pub fn received(&self) -> Vec<serde_json::Value> {
        read_jsonl(&self.record)
    }

    /// Wait until `n` messages were accepted (code 250).
    pub fn wait_accepted(&self, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let got: Vec<_> = self
                .received()
                .into_iter()
                .filter(|r| r["code"] == 250)
                .collect();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "sink accepted {} of {n} messages",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `switchyard sink --responses FILE --record FILE`: answers like a provider, per the
/// responses file, and records every transaction as a JSON line.
pub struct ResponseSink {
    pub port: u16,
    pub record: PathBuf,
    child: Child,
}

impl ResponseSink {
    /// Start on a free loopback port with `responses` (TOML) written into `dir`.
    pub fn start(dir: &Path, responses: &str) -> ResponseSink {
        ResponseSink::start_with(dir, responses, "127.0.0.1", free_port(), &[])
    }

    /// Start on `ip:port` with more `switchyard sink` arguments (e.g. `--tls-certificate`).
    pub fn start_with(
        dir: &Path,
        responses: &str,
        ip: &str,
        port: u16,
        extra: &[&std::ffi::OsStr],
    ) -> ResponseSink {
        let name = format!("{ip}-{port}");
        let file = dir.join(format!("responses-{name}.toml"));
        std::fs::write(&file, responses).unwrap();
        let record = dir.join(format!("sink-{name}.jsonl"));
        let child = Command::new(BIN)
            .args(["sink", "--listen", &format!("{ip}:{port}"), "--responses"])
            .arg(&file)
            .arg("--record")
            .arg(&record)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("sink-{name}.log"))).unwrap())
            .spawn()
            .unwrap();
        wait_for_port(
            format!("{ip}:{port}").parse().unwrap(),
            Duration::from_secs(20),
        );
        ResponseSink {
            port,
            record,
            child,
        }
    }

    /// Every transaction so far.
    pub fn received(&self) -> Vec<serde_json::Value> {
        read_jsonl(&self.record)
    }

    /// Whether any transaction so far came from `sender`.
    pub fn got_mail_from(&self, sender: &str) -> bool {
        self.received().iter().any(|r| r["mail_from"] == sender)
    }

    /// Wait until `f` holds on the transactions; returns them.
    pub fn wait(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        poll_until(what, timeout, || self.received(), f)
    }
}

impl Drop for ResponseSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// dnsmasq on a loopback port, authoritative for `.test`: names it is not told about get
/// NXDOMAIN; nothing is forwarded anywhere.
pub struct Dnsmasq {
    pub port: u16,
    child: Child,
}

impl Dnsmasq {
    /// Start with extra options such as `--mx-host=a.test,mx.a.test,10` and
    /// `--host-record=mx.a.test,127.0.0.1`.
    pub fn start(options: &[String]) -> Dnsmasq {
        Tool::Dnsmasq.require();
        let port = free_port();
        Dnsmasq {
            port,
            child: Dnsmasq::spawn(port, options),
        }
    }

    /// Stop, and start again on the same port with other records.
    pub fn restart(&mut self, options: &[String]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Dnsmasq::spawn(self.port, options);
    }

    fn spawn(port: u16, options: &[String]) -> Child {
        let child = Command::new("dnsmasq")
            .env("PATH", tools::path_with_sbin())
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--no-daemon",
            ])
            .args([
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--local=/test/",
                "--pid-file=",
                "--user=root",
            ])
            .arg(format!("--port={port}"))
            .args(options)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dnsmasq: {e}"));
        // dnsmasq answers TCP too: wait for it.
        wait_for_port(
            format!("127.0.0.1:{port}").parse().unwrap(),
            Duration::from_secs(10),
        );
        child
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Inject `n` messages through smtp_client.py (4 sessions), recording each acknowledged
/// Message-ID in `acks`; returns (exit ok, stdout, stderr).
pub fn inject(d: &Daemon, n: usize, acks: &Path, extra: &[&str]) -> (bool, String, String) {
    let mut args: Vec<String> = vec![
        "inject".into(),
        "127.0.0.1".into(),
        d.smtp.port().to_string(),
    ];
    args.extend([
        "--count".into(),
        n.to_string(),
        "--out".into(),
        acks.display().to_string(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    python("smtp_client.py", &args)
}

/// `switchyard ctl ARGS` against the daemon's API: (success, stdout, stderr).
pub fn ctl(d: &Daemon, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("ctl")
        .args(args)
        .env("SWITCHYARD_API", format!("http://{}", d.http))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Send `n` messages with swaks-like content over one smtplib session per call, through the
/// Python client (each gets its own Message-ID); returns the client's JSON lines.
pub fn send_many(d: &Daemon, n: usize, rcpt: &str, tenant: &str) -> Vec<serde_json::Value> {
    send_as(d, n, "sender@example.com", rcpt, tenant)
}

/// [`send_many`] with the given envelope sender.
pub fn send_as(
    d: &Daemon,
    n: usize,
    sender: &str,
    rcpt: &str,
    tenant: &str,
) -> Vec<serde_json::Value> {
    let (ok, out, err) = python(
        "smtp_client.py",
        &[
            "send".into(),
            "127.0.0.1".into(),
            d.smtp.port().to_string(),
            "--count".into(),
            n.to_string(),
            "--rcpt".into(),
            rcpt.into(),
            "--tenant".into(),
            tenant.into(),
            "--sender".into(),
            sender.into(),
        ],
    );
    assert!(ok, "{out}{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The JSON lines of a record file written so far (a line being written is skipped).
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// dnsmasq, a responses sink and a daemon whose shaping sends every domain to the sink.
pub struct World {
    pub dns: Dnsmasq,
    pub sink: ResponseSink,
    pub d: Daemon,
}

/// `mx`: (domain, MX host) pairs, every host on 127.0.0.1. `shaping` is appended to a
/// `["default"]` block pointing at the sink; `config` to the daemon's config.
pub fn world(mx: &[(&str, &str)], responses: &str, shaping: &str, config: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let sink = ResponseSink::start(dir.path(), responses);
    let mut opts = Vec::new();
    for (domain, host) in mx {
        opts.push(format!("--mx-host={domain},{host},10"));
        opts.push(format!("--host-record={host},127.0.0.1"));
    }
    let dns = Dnsmasq::start(&opts);
    let d = daemon_over(dir, dns.port, sink.port, shaping, config);
    World { dns, sink, d }
}

/// A daemon in `dir` resolving through dnsmasq on `dns_port`, whose `["default"]` shaping
/// block sends every domain to `smtp_port` in plain text, `shaping` appended to the
/// shaping file and `config` to the config.
pub fn daemon_over(
    dir: tempfile::TempDir,
    dns_port: u16,
    smtp_port: u16,
    shaping: &str,
    config: &str,
) -> Daemon {
    std::fs::write(
        dir.path().join("shaping.toml"),
        format!(
            "[\"default\"]\nsmtp_port = {smtp_port}\nenable_tls = \"Disabled\"\nprohibited_hosts = []\n\n{shaping}"
        ),
    )
    .unwrap();
    Daemon::start_in(
        dir,
        &format!(
            "[dns]\nnameservers = [\"127.0.0.1:{dns_port}\"]\n\n[shaping]\nfiles = [\"shaping.toml\"]\n\n{config}"
        ),
    )
}

/// Read JSON records with `read` every 50 ms until `f` holds on them (they are written
/// asynchronously by another process); panics with what was seen after `timeout`.
pub fn poll_until(
    what: &str,
    timeout: Duration,
    read: impl Fn() -> Vec<serde_json::Value>,
    f: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = read();
        if f(&got) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; saw {got:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
