//! The floors' processes (`http-floor`, `sse-floor`): the bare servers a
//! benchmark measures next to the gateway, each started in a process of
//! its own and found at the address its `listening` line names.

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running floor; killed when dropped.
pub struct Floor {
    /// `host:port` it listens on.
    pub addr: String,
    child: Child,
}

impl Floor {
    /// Starts the bench binary `name` with `args` and waits for its
    /// `{"message":"listening","addr":…}` line.
    pub async fn start(name: &str, args: &[String]) -> anyhow::Result<Self> {
        let mut child = Command::new(osmosis_e2e::process::binary(name))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().context("floor stdout")?;
        let line = BufReader::new(stdout)
            .lines()
            .next_line()
            .await?
            .with_context(|| format!("{name} said nothing"))?;
        let addr = serde_json::from_str::<serde_json::Value>(&line)?["addr"]
            .as_str()
            .with_context(|| format!("{name} named no address: {line}"))?
            .to_owned();
        Ok(Self { addr, child })
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("the floor has exited")
    }
}
