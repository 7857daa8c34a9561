//! Osmosis binaries as child processes of a test.
//!
//! Each process logs JSON lines to stdout; the harness keeps them, finds the
//! bound address in the `listening` line, and prints the whole log when the
//! owning test panics, so a failure shows what the process saw.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Path of a binary built by this workspace in the caller's profile
/// (`cargo build --bins`): beside the calling executable, or one level up
/// when the caller is a test in `target/<profile>/deps`.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("executable directory");
    let candidates = [dir.join(name), dir.parent().unwrap_or(dir).join(name)];
    candidates
        .iter()
        .find(|path| path.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{name} is not built next to {}: run `cargo build --workspace --bins --examples` first (`make test` does)",
                exe.display()
            )
        })
}

/// Log lines of a child process, shared with the thread that reads them.
#[derive(Default)]
struct LogBook {
    lines: Mutex<Vec<String>>,
    /// Output streams still open; 0 once the process closed both.
    open_streams: std::sync::atomic::AtomicUsize,
    changed: Condvar,
}

/// A running Osmosis binary. Killed when dropped; its log is printed when
/// the test is panicking.
pub struct Service {
    name: String,
    child: Child,
    log: Arc<LogBook>,
    _config: Option<tempfile::NamedTempFile>,
}

impl Service {
    /// Starts `binary` with a YAML config file holding `config` and `args`.
    pub fn start(binary_name: &str, config: &str, args: &[&str], env: &[(&str, String)]) -> Self {
        let mut file = tempfile::Builder::new()
            .suffix(".yaml")
            .tempfile()
            .expect("config file");
        file.write_all(config.as_bytes()).expect("writing config");
        let config_path = file.path().to_string_lossy().into_owned();
        let mut all_args = vec!["--config", config_path.as_str()];
        all_args.extend_from_slice(args);
        let mut service = Self::spawn(binary_name, &all_args, env);
        service._config = Some(file);
        service
    }

    /// Starts `binary` (a path relative to the build profile's directory,
    /// e.g. `examples/echo`) with `args`, logging JSON lines.
    pub fn spawn(binary_name: &str, args: &[&str], env: &[(&str, String)]) -> Self {
        let mut command = Command::new(binary(binary_name));
        command
            .arg("--log-format")
            .arg("json")
            .args(args)
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary_name}: {e}"));
        let log = Arc::new(LogBook {
            open_streams: 2.into(),
            ..LogBook::default()
        });
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut lines = log.lines.lock().unwrap_or_else(|p| p.into_inner());
                    lines.push(line);
                    drop(lines);
                    log.changed.notify_all();
                }
                let _lines = log.lines.lock().unwrap_or_else(|p| p.into_inner());
                log.open_streams
                    .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                log.changed.notify_all();
            });
        }
        Self {
            name: binary_name.to_owned(),
            child,
            log,
            _config: None,
        }
    }

    /// Waits for a JSON log line whose `message` is `message`; returns it.
    pub fn wait_for_log(&self, message: &str, timeout: Duration) -> serde_json::Value {
        self.wait_for_log_where(message, timeout, |_| true)
    }

    /// Waits for a JSON log line whose `message` is `message` and that
    /// satisfies `matches`; returns it.
    pub fn wait_for_log_where(
        &self,
        message: &str,
        timeout: Duration,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        let mut lines = self.log.lines.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            for line in &lines[seen..] {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(line)
                    && value["message"] == message
                    && matches(&value)
                {
                    return value;
                }
            }
            seen = lines.len();
            let now = Instant::now();
            if now >= deadline {
                drop(lines);
                panic!("{} did not log {message:?} within {timeout:?}", self.name);
            }
            if self
                .log
                .open_streams
                .load(std::sync::atomic::Ordering::SeqCst)
                == 0
            {
                drop(lines);
                panic!("{} exited before logging {message:?}", self.name);
            }
            lines = match self.log.changed.wait_timeout(lines, deadline - now) {
                Ok((lines, _)) => lines,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// Waits for the `listening` log line and returns the bound address.
    pub fn wait_listening(&self) -> SocketAddr {
        let line = self.wait_for_log("listening", Duration::from_secs(60));
        line["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("listening line without addr: {line}"))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().expect("waiting for child").is_some()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("sending a signal");
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for child") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the process logged so far.
    pub fn log_text(&self) -> String {
        let lines = self.log.lines.lock();
        lines
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .join("\n")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}\n----", self.name, self.log_text());
        }
    }
}

/// A running `osmosis-gateway`.
pub struct Gateway {
    pub service: Service,
    pub addr: SocketAddr,
}

impl Gateway {
    /// Starts the gateway with `config` and waits until it listens.
    pub fn start(config: &str) -> Self {
        Self::start_with(config, &[])
    }

    /// Starts the gateway with extra command-line arguments.
    pub fn start_with(config: &str, args: &[&str]) -> Self {
        Self::start_binary("osmosis-gateway", config, args)
    }

    /// Starts another build of the gateway: `binary` as [`binary`] finds
    /// it, or an absolute path (e.g. a build of another commit).
    pub fn start_binary(binary: &str, config: &str, args: &[&str]) -> Self {
        let service = Service::start(binary, config, args, &[]);
        let addr = service.wait_listening();
        Self { service, addr }
    }

    /// A gateway in front of `channel` whose replies go to the topic
    /// `replies` (created at start), serving `routes`: each the inside of a
    /// route's YAML mapping without its channel, e.g.
    /// `method: POST, path: /work, mode: request`.
    pub fn for_channel(channel: &str, replies: &str, routes: &[&str]) -> Self {
        let routes: String = routes
            .iter()
            .map(|route| format!("  - {{ {route}, channel: {channel} }}\n"))
            .collect();
        Self::start_with(
            &format!(
                "listen: 127.0.0.1:0\n\
                 kafka: {{ brokers: \"{}\" }}\n\
                 channels: {{ {channel}: {{}} }}\n\
                 replies: {{ topic: {replies} }}\n\
                 routes:\n{routes}",
                crate::kafka::bootstrap()
            ),
            &["--create-topics"],
        )
    }

    /// `http://addr` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The value of one of its metric sample lines.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        metric_sample(&self.url("/metrics"), sample).await
    }

    /// Waits until `/readyz` answers 200 (Kafka answers and, with request
    /// routes, the gateway owns a reply partition).
    pub async fn wait_ready(&self) {
        let ready = self.url("/readyz");
        crate::eventually(Duration::from_secs(60), "the gateway to be ready", || {
            let ready = ready.clone();
            async move {
                let response = reqwest::get(&ready).await.ok()?;
                (response.status() == reqwest::StatusCode::OK).then_some(())
            }
        })
        .await;
    }
}

/// A running worker binary (an example worker or `osmosis-http-worker`).
pub struct Worker {
    pub service: Service,
    /// Address of its `/metrics` endpoint.
    pub metrics_addr: SocketAddr,
}

impl Worker {
    /// Starts `binary` on `channel` of `brokers` with extra `args`, and waits
    /// until it has started (joined the group: assignment may follow).
    pub fn start(binary_name: &str, brokers: &str, channel: &str, args: &[&str]) -> Self {
        let mut all_args = vec!["--brokers", brokers, "--channel", channel];
        all_args.extend_from_slice(args);
        let service = Service::spawn(binary_name, &all_args, &[]);
        let line = service.wait_for_log("worker started", Duration::from_secs(60));
        let metrics_addr = line["metrics"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("worker started without a metrics address: {line}"));
        Self {
            service,
            metrics_addr,
        }
    }

    /// Waits until the worker owns at least one partition.
    pub fn wait_assigned(&self) {
        self.service
            .wait_for_log_where("partitions assigned", Duration::from_secs(60), |line| {
                line["partitions"].as_str().is_some_and(|p| !p.is_empty())
            });
    }

    /// Waits until a metric sample line reads `value`: a worker counts a
    /// message once its reply or dead letter is acknowledged, a moment after
    /// a client may already have seen it. Panics with the last reading after
    /// `timeout`.
    pub async fn wait_metric(&self, sample: &str, value: f64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let reading = self.metric(sample).await;
            if reading == Some(value) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{sample} read {reading:?}, not {value}, after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of a metric sample line (e.g. `osmosis_worker_in_flight`).
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        metric_sample(&format!("http://{}/metrics", self.metrics_addr), sample).await
    }
}

/// The value of a sample line (`name{labels}`) of the metrics at `url`.
pub async fn metric_sample(url: &str, sample: &str) -> Option<f64> {
    let text = reqwest::get(url).await.ok()?.text().await.ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}
