//! Process helpers for the real binaries.

use base64::Engine;
use rand::RngCore;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Where the workspace's binaries are: `KEYPLANE_BIN_DIR`, else the target directory of the
/// running executable (`target/<profile>/deps/<test>` → `target/<profile>/`; a binary such as
/// `keyplane-bench` is already there).
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("KEYPLANE_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("current exe");
            let mut dir = exe.parent().expect("exe dir").to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    }
}

/// The path of the workspace binary `name` in [`bin_dir`]; panics with a hint when it is not built.
pub fn bin_path(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is not built: run the tests with `cargo test --workspace` (or `cargo build --bins` first)",
        path.display()
    );
    path
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn random_b64(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The output of one `keyplanectl` run.
#[derive(Debug)]
pub struct CtlOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    /// Parses stdout as JSON; panics with both streams if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "keyplanectl stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// Panics unless the command succeeded.
    pub fn ok(self) -> CtlOutput {
        assert_eq!(
            self.code, 0,
            "keyplanectl failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Spawns `cmd` with stdout piped and stderr appended to `log_path`, and waits (at most 30 s)
/// for the stdout line `{prefix}ADDR` that says where it listens.
fn spawn_announced(
    cmd: Command,
    prefix: &'static str,
    log_path: &Path,
    what: &str,
) -> (Child, SocketAddr) {
    let (child, addr, _) = spawn_announced_with(cmd, prefix, &[], log_path, what);
    (child, addr)
}

/// [`spawn_announced`], also returning the address of an `{also}ADDR` line printed before it.
fn spawn_announced_with(
    mut cmd: Command,
    prefix: &'static str,
    also: &'static [&'static str],
    log_path: &Path,
    what: &str,
) -> (Child, SocketAddr, Vec<Option<SocketAddr>>) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // With `--log-format json` the announcement is a JSON line; its `message` is the text.
            let line = serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or(line);
            if let Some(addr) = line.strip_prefix(prefix) {
                let _ = tx.send((None, addr.trim().to_string()));
            } else if let Some((i, addr)) = also
                .iter()
                .enumerate()
                .find_map(|(i, a)| Some((i, line.strip_prefix(a)?)))
            {
                let _ = tx.send((Some(i), addr.trim().to_string()));
            }
        }
    });
    let mut other = vec![None; also.len()];
    loop {
        let Ok((which, addr)) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not start; its log:\n{}",
                std::fs::read_to_string(log_path).unwrap_or_default()
            );
        };
        match which {
            None => return (child, addr.parse().unwrap(), other),
            Some(i) => other[i] = Some(addr.parse().unwrap()),
        }
    }
}

/// Certificates written by `keyplane-control gen-certs` (a private CA, the control plane's
/// server certificate, a node certificate for server and client auth).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub control_cert: PathBuf,
    pub control_key: PathBuf,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
}

impl TlsFiles {
    /// Runs `keyplane-control gen-certs --out DIR` and names its files.
    pub fn generate(dir: &Path) -> TlsFiles {
        let out = Command::new(bin_path("keyplane-control"))
            .arg("gen-certs")
            .arg("--out")
            .arg(dir)
            .output()
            .expect("run keyplane-control gen-certs");
        assert!(
            out.status.success(),
            "gen-certs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TlsFiles::in_dir(dir)
    }

    /// The file names `gen-certs` (and `--dev`, in `<data-dir>/tls`) uses, in `dir`.
    pub fn in_dir(dir: &Path) -> TlsFiles {
        TlsFiles {
            dir: dir.to_path_buf(),
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca-key.pem"),
            control_cert: dir.join("control.pem"),
            control_key: dir.join("control-key.pem"),
            node_cert: dir.join("node.pem"),
            node_key: dir.join("node-key.pem"),
        }
    }
}

/// How to start a control plane beyond the defaults of [`ControlPlane::start`].
#[derive(Debug, Clone, Default)]
pub struct ControlOptions {
    /// Serve gRPC over TLS with these files' control certificate.
    pub tls: Option<TlsFiles>,
    /// Also require node client certificates signed by the same CA (`--client-ca`).
    pub mutual_tls: bool,
    /// Start a metrics listener on a free loopback port (`--metrics-listen`).
    pub metrics: bool,
    /// Start the web console on a free loopback port (`--console-listen`).
    pub console: bool,
    /// More flags (`--log-format json`, say).
    pub extra_args: Vec<String>,
}

/// Waits (at most 10 s) until `addr` can be bound again after a stop.
fn wait_port_free(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpListener::bind(addr).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGKILL: no chance to flush or clean up.
fn kill_child(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// SIGTERM and wait (at most `timeout`) for the exit code; panics past it.
fn terminate_child(child: &mut Option<Child>, what: &str, timeout: Duration) -> Option<i32> {
    let mut child = child.take()?;
    send_signal(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {timeout:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `keyplane-control` with its own data dir and secrets.
pub struct ControlPlane {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub master_key: String,
    pub admin_token: String,
    pub node_token: String,
    /// stderr of every run, appended: the control plane's logs.
    pub log_path: PathBuf,
    pub options: ControlOptions,
    /// The metrics listener's address, with [`ControlOptions::metrics`].
    pub metrics_addr: Option<SocketAddr>,
    /// The console's address, with [`ControlOptions::console`].
    pub console_addr: Option<SocketAddr>,
    _tmp: tempfile::TempDir,
}

impl ControlPlane {
    /// [`ControlPlane::start`] with extra flags, e.g. `--catalog-sync-interval-secs 0`.
    pub fn start_with_args(extra: &[&str]) -> ControlPlane {
        Self::start_with(ControlOptions {
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            ..ControlOptions::default()
        })
    }

    /// Starts a control plane on a free loopback port with a fresh data dir and random secrets.
    pub fn start() -> ControlPlane {
        Self::start_with(ControlOptions::default())
    }

    /// [`ControlPlane::start`] with TLS, mutual TLS, a metrics listener or more flags.
    pub fn start_with(options: ControlOptions) -> ControlPlane {
        let mut cp = Self::unstarted(options);
        cp.spawn("127.0.0.1:0".parse().unwrap());
        cp
    }

    /// A control plane with its directories and secrets, not started: fill its data dir (with
    /// `keyplane-control restore`, say) and then [`ControlPlane::restart`] it.
    pub fn unstarted(options: ControlOptions) -> ControlPlane {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        ControlPlane {
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            log_path: tmp.path().join("control.log"),
            data_dir,
            master_key: random_b64(32),
            admin_token: random_token(),
            node_token: random_token(),
            options,
            metrics_addr: None,
            console_addr: None,
            _tmp: tmp,
        }
    }

    /// `http://ADDR` (or `https://ADDR` with TLS), for `--control` and gRPC clients.
    pub fn url(&self) -> String {
        let scheme = if self.options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Runs `keyplane-control ARGS…` offline (no server) with this control plane's master key;
    /// `env` adds variables.
    pub fn offline(&self, args: &[&str], env: &[(&str, &str)]) -> CtlOutput {
        let mut cmd = Command::new(bin_path("keyplane-control"));
        cmd.args(args)
            .env("KEYPLANE_MASTER_KEY", &self.master_key)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = wait_output(
            cmd.spawn().expect("spawn keyplane-control"),
            Duration::from_secs(120),
        );
        CtlOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self, listen: SocketAddr) {
        let mut cmd = Command::new(bin_path("keyplane-control"));
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(listen.to_string())
            .env("KEYPLANE_MASTER_KEY", &self.master_key)
            .env("KEYPLANE_ADMIN_TOKEN", &self.admin_token)
            .env("KEYPLANE_NODE_TOKEN", &self.node_token)
            .env("RUST_LOG", "info");
        if let Some(tls) = &self.options.tls {
            cmd.arg("--tls-cert")
                .arg(&tls.control_cert)
                .arg("--tls-key")
                .arg(&tls.control_key);
            if self.options.mutual_tls {
                cmd.arg("--client-ca").arg(&tls.ca);
            }
        }
        if self.options.metrics {
            let port = self.metrics_addr.map_or(0, |a| a.port());
            cmd.arg("--metrics-listen").arg(format!("127.0.0.1:{port}"));
        }
        if self.options.console {
            let port = self.console_addr.map_or(0, |a| a.port());
            cmd.arg("--console-listen").arg(format!("127.0.0.1:{port}"));
        }
        cmd.args(&self.options.extra_args);
        let (child, addr, others) = spawn_announced_with(
            cmd,
            "keyplane-control listening on ",
            &["keyplane-control metrics on ", "console listening on "],
            &self.log_path,
            "keyplane-control",
        );
        self.addr = addr;
        self.metrics_addr = others[0];
        self.console_addr = others[1];
        self.child = Some(child);
    }

    /// Starts it again on the same address with the same data dir and secrets (a control plane
    /// from [`ControlPlane::unstarted`] starts on a free port).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it before restarting");
        if self.addr.port() != 0 {
            wait_port_free(self.addr);
        }
        self.spawn(self.addr);
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        kill_child(&mut self.child);
    }

    /// SIGTERM and wait (at most 30 s) for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        terminate_child(&mut self.child, "keyplane-control", Duration::from_secs(30))
    }

    /// Runs `keyplanectl` against this control plane.
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        self.ctl_with(args, None, &self.admin_token)
    }

    /// Runs `keyplanectl` with `stdin` (for `credential add`) and an explicit admin token.
    pub fn ctl_with(&self, args: &[&str], stdin: Option<&str>, token: &str) -> CtlOutput {
        let ca = self.options.tls.as_ref().map(|t| t.ca.as_path());
        run_ctl_ca(&self.url(), token, args, stdin, ca)
    }

    /// The data-plane flags that reach this control plane: `--control URL`, and with TLS
    /// `--control-ca` (and the node certificate as `--control-cert/--control-key`).
    pub fn node_tls_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(tls) = &self.options.tls {
            args.push("--control-ca".to_string());
            args.push(tls.ca.display().to_string());
            if self.options.mutual_tls {
                args.push("--control-cert".to_string());
                args.push(tls.node_cert.display().to_string());
                args.push("--control-key".to_string());
                args.push(tls.node_key.display().to_string());
            }
        }
        args
    }

    /// The logs written so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `keyplanectl --control URL ARGS…` with the admin token in its environment.
pub fn run_ctl(url: &str, token: &str, args: &[&str], stdin: Option<&str>) -> CtlOutput {
    run_ctl_ca(url, token, args, stdin, None)
}

/// [`run_ctl`] trusting the CA in `ca` (as `KEYPLANE_CA`) for an `https://` URL.
pub fn run_ctl_ca(
    url: &str,
    token: &str,
    args: &[&str],
    stdin: Option<&str>,
    ca: Option<&Path>,
) -> CtlOutput {
    let mut cmd = Command::new(bin_path("keyplanectl"));
    cmd.env_remove("KEYPLANE_CA");
    if let Some(ca) = ca {
        cmd.env("KEYPLANE_CA", ca);
    }
    let mut child = cmd
        .arg("--control")
        .arg(url)
        .args(args)
        .env("KEYPLANE_ADMIN_TOKEN", token)
        .env_remove("KEYPLANE_CONTROL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keyplanectl");
    {
        let mut pipe = child.stdin.take().unwrap();
        if let Some(input) = stdin {
            pipe.write_all(input.as_bytes()).unwrap();
        }
    }
    let out = wait_output(child, Duration::from_secs(60));
    CtlOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Waits for a child's output, killing it if it runs past `timeout`.
fn wait_output(child: Child, timeout: Duration) -> std::process::Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("wait for child"),
        Err(_) => {
            send_signal(pid, libc::SIGKILL);
            panic!("process {pid} ran longer than {timeout:?}");
        }
    }
}

/// Sends `signal` to `pid`.
pub fn send_signal(pid: u32, signal: i32) {
    // SAFETY-free: `kill(2)` through libc is the one unsafe call the testkit needs.
    #[allow(unsafe_code)]
    // SAFETY: kill has no memory-safety preconditions; a stale pid at worst signals nothing.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// Asserts that every line of `text` (a process's `stream`, "stdout" or "stderr") is a JSON
/// object, as everything a binary prints with `--log-format json` must be.
pub fn assert_json_lines(stream: &str, text: &str) {
    for line in text.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v.is_object()),
            "a {stream} line is not a JSON object: {line:?}"
        );
    }
}

/// Every file below `dir`, for tests that grep a data dir.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// A running `keyplane-dataplane` with its own state dir.
pub struct DataPlane {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub state_dir: PathBuf,
    pub node_id: String,
    pub control_url: String,
    node_token: String,
    extra_args: Vec<String>,
    pub log_path: PathBuf,
    /// The CA to trust when the listener is HTTPS (`--tls-cert` among the flags): health checks
    /// then go over TLS.
    pub https_ca: Option<PathBuf>,
    _tmp: tempfile::TempDir,
}

impl DataPlane {
    /// Starts a data plane subscribed to `control`, on a free loopback port. `extra` are more
    /// flags (timeouts, say).
    pub fn start(control: &ControlPlane, node_id: &str, extra: &[&str]) -> DataPlane {
        let tls_args = control.node_tls_args();
        let mut args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        Self::start_with(&control.url(), &control.node_token, node_id, &args)
    }

    /// Starts a data plane whose own listener is HTTPS with `cert`/`key`, trusted through `ca`
    /// (and, with mutual TLS to `control`, presenting the same certificate to it).
    pub fn start_https(
        control: &ControlPlane,
        node_id: &str,
        cert: &Path,
        key: &Path,
        ca: &Path,
        extra: &[&str],
    ) -> DataPlane {
        let mut args: Vec<String> = Vec::new();
        if let Some(tls) = &control.options.tls {
            args.push("--control-ca".into());
            args.push(tls.ca.display().to_string());
        }
        for (flag, path) in [("--tls-cert", cert), ("--tls-key", key)] {
            args.push(flag.into());
            args.push(path.display().to_string());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut dp = Self::unstarted(&control.url(), &control.node_token, node_id, &refs);
        dp.https_ca = Some(ca.to_path_buf());
        dp.spawn("127.0.0.1:0".parse().unwrap());
        dp
    }

    /// Starts a data plane for a control plane at `control_url` (which may be down).
    pub fn start_with(
        control_url: &str,
        node_token: &str,
        node_id: &str,
        extra: &[&str],
    ) -> DataPlane {
        let mut dp = Self::unstarted(control_url, node_token, node_id, extra);
        dp.spawn("127.0.0.1:0".parse().unwrap());
        dp
    }

    fn unstarted(control_url: &str, node_token: &str, node_id: &str, extra: &[&str]) -> DataPlane {
        let tmp = tempfile::tempdir().expect("tempdir");
        DataPlane {
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            state_dir: tmp.path().join("state"),
            node_id: node_id.to_string(),
            control_url: control_url.to_string(),
            node_token: node_token.to_string(),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            log_path: tmp.path().join("dataplane.log"),
            https_ca: None,
            _tmp: tmp,
        }
    }

    fn spawn(&mut self, listen: SocketAddr) {
        let mut cmd = Command::new(bin_path("keyplane-dataplane"));
        cmd.arg("--control")
            .arg(&self.control_url)
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--node-id")
            .arg(&self.node_id)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(&self.extra_args)
            .env("KEYPLANE_NODE_TOKEN", &self.node_token)
            .env("RUST_LOG", "info");
        let (child, addr) = spawn_announced(
            cmd,
            "keyplane-dataplane listening on ",
            &self.log_path,
            "keyplane-dataplane",
        );
        self.addr = addr;
        self.child = Some(child);
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        let scheme = if self.https_ca.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        wait_until(timeout, || self.get_status("/readyz") == Some(200))
    }

    /// The status of a GET, `None` if the request failed.
    pub fn get_status(&self, path: &str) -> Option<u16> {
        let req = crate::http::HttpRequest::get(path);
        let resp = match &self.https_ca {
            Some(ca) => req.send_tls(self.addr, ca, Duration::from_secs(5)),
            None => req.send(self.addr, Duration::from_secs(5)),
        };
        resp.ok().map(|r| r.status)
    }

    /// Starts it again on the same address and state dir.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it before restarting");
        wait_port_free(self.addr);
        self.spawn(self.addr);
    }

    pub fn kill9(&mut self) {
        kill_child(&mut self.child);
    }

    /// SIGTERM and wait (at most 60 s) for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        terminate_child(
            &mut self.child,
            "keyplane-dataplane",
            Duration::from_secs(60),
        )
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.kill9();
    }
}
