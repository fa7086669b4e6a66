//! A real headless browser for tests: Debian's `chromium` driven through `chromedriver` over
//! the W3C WebDriver protocol (JSON over HTTP on loopback), with this crate's blocking HTTP
//! client. A few commands are all the console's tests need, so no WebDriver crate is pulled in.
//!
//! `chromium` and `chromium-driver` come from apt (`.ci/run` installs them). Every call is bounded
//! by [`STEP_TIMEOUT`]; waits poll with a deadline.

use crate::http::HttpRequest;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The longest one WebDriver command may take (a page load included).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// The key under which WebDriver returns an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One headless Chromium session; the session and the driver end when it is dropped.
pub struct Browser {
    driver: Option<Child>,
    addr: SocketAddr,
    session: String,
}

impl Browser {
    /// Starts `chromedriver` on a free loopback port and opens a headless Chromium session.
    pub fn start() -> Browser {
        let mut child = Command::new("chromedriver")
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start chromedriver ({e}): install Debian's chromium and \
                     chromium-driver (apt-get install -y chromium chromium-driver; .ci/run does)"
                )
            });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // "ChromeDriver was started successfully on port 35127."
                if let Some(rest) = line.split("successfully on port ").nth(1) {
                    let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    let _ = tx.send(port);
                }
            }
        });
        let Ok(port) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromedriver did not say which port it listens on");
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut browser = Browser {
            driver: Some(child),
            addr,
            session: String::new(),
        };
        let created = browser.command(
            "POST",
            "/session",
            Some(json!({
                "capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium_binary(),
                        "args": [
                            "--headless=new", "--no-sandbox", "--disable-gpu",
                            "--disable-dev-shm-usage", "--no-first-run",
                            "--disable-extensions", "--window-size=1280,900",
                        ],
                    },
                    "timeouts": {"pageLoad": STEP_TIMEOUT.as_millis() as u64, "script": 10_000},
                }}
            })),
        );
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_string();
        browser
    }

    /// Sends one WebDriver command; returns its `value`, panicking on a WebDriver error.
    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = if path.starts_with("/session/") || path == "/session" {
            path.to_string()
        } else {
            format!("/session/{}{path}", self.session)
        };
        let req = HttpRequest {
            method,
            path: &path,
            headers: vec![("content-type", "application/json".to_string())],
            body: body.map_or_else(Vec::new, |b| serde_json::to_vec(&b).unwrap()),
        };
        let resp = req
            .send(self.addr, STEP_TIMEOUT)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let value: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        if resp.status != 200 {
            panic!("WebDriver {method} {path}: {} {value}", resp.status);
        }
        value["value"].clone()
    }

    /// Opens `url` and waits for it to load.
    pub fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url })));
    }

    /// The current URL.
    pub fn url(&self) -> String {
        self.command("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The current page's HTML as the browser holds it (after scripts ran).
    pub fn source(&self) -> String {
        self.command("GET", "/source", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The first element matching the CSS selector, if any.
    pub fn find(&self, css: &str) -> Option<String> {
        let req = HttpRequest {
            method: "POST",
            path: &format!("/session/{}/element", self.session),
            headers: vec![("content-type", "application/json".to_string())],
            body: serde_json::to_vec(&json!({"using": "css selector", "value": css})).unwrap(),
        };
        let resp = req.send(self.addr, STEP_TIMEOUT).ok()?;
        if resp.status != 200 {
            return None;
        }
        let value: Value = serde_json::from_slice(&resp.body).ok()?;
        value["value"][ELEMENT].as_str().map(str::to_string)
    }

    fn element(&self, css: &str) -> String {
        self.find(css)
            .unwrap_or_else(|| panic!("no element {css:?} on {}", self.url()))
    }

    /// Types `text` into the element matching `css`.
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.command(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Clicks the element matching `css` (a submit button navigates; the next command waits
    /// for the new page).
    pub fn click(&self, css: &str) {
        let id = self.element(css);
        self.command("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    /// A property of the element matching `css` (`value` of an input, say).
    pub fn property(&self, css: &str, name: &str) -> Value {
        let id = self.element(css);
        self.command("GET", &format!("/element/{id}/property/{name}"), None)
    }

    /// Runs `script` in the page (its `return` value comes back).
    pub fn script(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Waits (at most `timeout`) until an element matches `css`.
    pub fn wait_for(&self, css: &str, timeout: Duration) -> bool {
        crate::wait_until(timeout, || self.find(css).is_some())
    }

    /// Saves a PNG screenshot of the viewport.
    pub fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine;
        let b64 = self.command("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}

/// Debian names the browser `chromium`; other systems `chromium-browser`.
fn chromium_binary() -> String {
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(candidate).exists() {
            return candidate.to_string();
        }
    }
    "chromium".to_string()
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let req = HttpRequest {
                method: "DELETE",
                path: &format!("/session/{}", self.session),
                headers: Vec::new(),
                body: Vec::new(),
            };
            let _ = req.send(self.addr, Duration::from_secs(10));
        }
        if let Some(mut child) = self.driver.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
