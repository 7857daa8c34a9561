//! A real headless Chromium driven over the DevTools protocol: it opens a
//! page, and the test reads what the page shows (`Runtime.evaluate`) until
//! it shows what is expected or a deadline passes.
//!
//! Chromium is Debian's `chromium` package; `scripts/test.sh` installs it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::kafka::free_port;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A headless Chromium showing one page. Killed when dropped.
pub struct Browser {
    child: Child,
    socket: Socket,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium on `url` and connects to the page.
    pub async fn open(url: &str) -> Self {
        let binary = ["chromium", "chromium-browser"]
            .into_iter()
            .find(|name| {
                Command::new(name)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success())
            })
            .expect(
                "Chromium is not installed: `scripts/browser.sh install` installs Debian's chromium (make test runs it)",
            );
        let profile = tempfile::tempdir().expect("a browser profile directory");
        let port = free_port();
        let child = Command::new(binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-allow-origins=*",
            ])
            .arg(format!("--remote-debugging-port={port}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromium");
        let socket = connect_to_page(port, url).await;
        Self {
            child,
            socket,
            next_id: 1,
            _profile: profile,
        }
    }

    /// Evaluates `expression` in the page; its value (JSON).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let command = json!({
            "id": id,
            "method": "Runtime.evaluate",
            "params": { "expression": expression, "returnByValue": true },
        });
        self.socket
            .send(Message::Text(command.to_string().into()))
            .await
            .expect("sending to the page");
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.socket.next())
                .await
                .expect("the page answers within 10 s")
                .expect("the page's socket is open")
                .expect("reading from the page");
            let Message::Text(text) = message else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if answer["id"] == id {
                return answer["result"]["result"]["value"].clone();
            }
        }
    }

    /// The text the element `id` shows, once `accept` takes it; panics with
    /// the last text after `timeout`.
    pub async fn wait_text(
        &mut self,
        id: &str,
        timeout: Duration,
        accept: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        let expression = format!("document.getElementById({id:?})?.innerText ?? ''");
        loop {
            let text = self.eval(&expression).await;
            let text = text.as_str().unwrap_or_default().to_owned();
            if accept(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "#{id} did not show what was expected within {timeout:?}; it shows {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The DevTools socket of the page showing `url`, once Chromium lists it.
async fn connect_to_page(port: u16, url: &str) -> Socket {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let targets: Option<Vec<Value>> = match http
            .get(format!("http://127.0.0.1:{port}/json/list"))
            .send()
            .await
        {
            Ok(response) => response.json().await.ok(),
            Err(_) => None,
        };
        let page = targets.into_iter().flatten().find(|target| {
            target["type"] == "page" && target["url"].as_str().is_some_and(|u| u.starts_with(url))
        });
        if let Some(socket_url) =
            page.and_then(|p| p["webSocketDebuggerUrl"].as_str().map(str::to_owned))
        {
            let (socket, _) = tokio_tungstenite::connect_async(socket_url)
                .await
                .expect("connecting to the page");
            return socket;
        }
        assert!(
            Instant::now() < deadline,
            "Chromium did not list the page {url} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
