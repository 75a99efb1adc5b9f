//! A simulated multi-host network: each node in its own Linux network namespace, with its own
//! address, joined by veth pairs to a bridge that lives in a namespace of its own.
//!
//! Rules kept (the fleet fault suite runs on shared machines):
//! - addresses come from 198.18.0.0/15 (reserved for benchmarking) and exist only inside the
//!   namespaces created here; no default route, no NAT, nothing is bridged to a real interface
//!   and nothing is created in the namespace the tests were started from;
//! - every name starts with a per-run prefix (`ghf<pid>x<n>-`), and everything is deleted when
//!   the [`Network`] drops, also when the test fails; namespaces left by a run that was killed
//!   (its pid gone) are deleted by the next run.
//!
//! Needs root and `ip` (iproute2). [`Network::available`] says whether both are there.

use std::net::Ipv4Addr;
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};
use tokio::process::Command;

/// Where `ip netns exec` looks for per-namespace files (`/etc/netns/<ns>/hosts`).
const NETNS_ETC: &str = "/etc/netns";
/// The prefix of every namespace of every run.
const PREFIX: &str = "ghf";
/// The network of the nodes: 198.18.0.0/24, node `i` at 198.18.0.(10 + i).
const NET: [u8; 3] = [198, 18, 0];
const PREFIX_LEN: u8 = 24;
const FIRST_HOST: u8 = 10;

/// Runs of this process so far (several networks may exist one after another).
static RUNS: AtomicU32 = AtomicU32::new(0);

/// The namespaces of one run; deleted on drop.
#[derive(Debug)]
pub struct Network {
    prefix: String,
    bridge_ns: String,
    nodes: Vec<(String, Ipv4Addr)>,
    /// Whether this value created the namespaces (and deletes them on drop).
    owned: bool,
}

/// A MAC address no interface has: frames sent to it are flooded by the bridge and dropped by
/// every receiver, so packets for it vanish without an error.
const NOWHERE_MAC: &str = "02:00:5e:00:de:ad";

/// A traffic cut between nodes (both ways), healed on drop.
#[derive(Debug)]
pub struct Cut {
    routes: Vec<(String, Ipv4Addr)>,
}

// === impl Network ===

impl Network {
    /// Whether this process may create network namespaces: root, and `ip netns` works.
    /// `Err` carries the reason to print when skipping.
    pub fn available() -> std::result::Result<(), String> {
        let uid = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map_err(|e| format!("cannot run `id -u`: {e}"))?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return Err("not running as root (network namespaces need root)".to_owned());
        }
        let ip = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map_err(|e| format!("`ip` (iproute2) is not installed: {e}"))?;
        if !ip.status.success() {
            return Err(format!(
                "`ip netns list` failed: {}",
                String::from_utf8_lossy(&ip.stderr).trim()
            ));
        }
        Ok(())
    }

    /// Creates the bridge namespace and one namespace per node, in order (node `i` gets
    /// 198.18.0.(10 + i)). Deletes what a killed earlier run left first.
    pub async fn create(nodes: &[&str]) -> Result<Network> {
        remove_leftovers().await;
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{PREFIX}{}x{run}-", std::process::id());
        let bridge_ns = format!("{prefix}br");
        let mut network = Network {
            prefix,
            bridge_ns: bridge_ns.clone(),
            nodes: Vec::new(),
            owned: true,
        };
        ip(&["netns", "add", &bridge_ns]).await?;
        ip(&["-n", &bridge_ns, "link", "add", "br0", "type", "bridge"]).await?;
        ip(&["-n", &bridge_ns, "link", "set", "br0", "up"]).await?;
        for (index, name) in nodes.iter().enumerate() {
            let ns = format!("{}{name}", network.prefix);
            let host = FIRST_HOST + u8::try_from(index).context("too many nodes")?;
            let addr = Ipv4Addr::new(NET[0], NET[1], NET[2], host);
            ip(&["netns", "add", &ns]).await?;
            network.nodes.push((ns.clone(), addr));
            let port = format!("v{index}");
            // Both ends are made inside namespaces of this run: the bridge port in the bridge's,
            // `eth0` in the node's.
            ip(&[
                "-n", &bridge_ns, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])
            .await?;
            ip(&["-n", &bridge_ns, "link", "set", &port, "master", "br0"]).await?;
            ip(&["-n", &bridge_ns, "link", "set", &port, "up"]).await?;
            let cidr = format!("{addr}/{PREFIX_LEN}");
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]).await?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"]).await?;
            ip(&["-n", &ns, "link", "set", "lo", "up"]).await?;
        }
        Ok(network)
    }

    /// The network as one line, for [`Network::attach`] in a process started inside it.
    pub fn describe(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|(ns, addr)| format!("{ns}={addr}"))
            .collect();
        format!("{};{};{}", self.prefix, self.bridge_ns, nodes.join(","))
    }

    /// The network [`Network::describe`] described, without owning it (nothing is deleted
    /// when this value drops).
    pub fn attach(description: &str) -> Result<Network> {
        let mut parts = description.splitn(3, ';');
        let (Some(prefix), Some(bridge_ns), Some(nodes)) =
            (parts.next(), parts.next(), parts.next())
        else {
            bail!("not a network description: {description:?}");
        };
        let nodes = nodes
            .split(',')
            .map(|item| {
                let (ns, addr) = item.split_once('=').context("node=addr")?;
                Ok((ns.to_owned(), addr.parse()?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Network {
            prefix: prefix.to_owned(),
            bridge_ns: bridge_ns.to_owned(),
            nodes,
            owned: false,
        })
    }

    /// The namespace of `node`.
    pub fn ns(&self, node: &str) -> Result<&str> {
        self.node(node).map(|(ns, _)| ns.as_str())
    }

    /// The address of `node`.
    pub fn addr(&self, node: &str) -> Result<Ipv4Addr> {
        self.node(node).map(|(_, addr)| *addr)
    }

    fn node(&self, node: &str) -> Result<&(String, Ipv4Addr)> {
        let ns = format!("{}{node}", self.prefix);
        self.nodes
            .iter()
            .find(|(name, _)| *name == ns)
            .with_context(|| format!("no node {node} in this network"))
    }

    /// Cuts all traffic between `a` and each of `others`, both ways, silently, as a broken
    /// link does: each side's neighbour entry for the other points to a MAC address nobody
    /// has, so packets leave and vanish, no error is reported, and only timeouts (HTTP/2
    /// keepalive, TCP retransmission) notice. Traffic with every other node flows on.
    pub async fn cut(&self, a: &str, others: &[&str]) -> Result<Cut> {
        let mut cut = Cut { routes: Vec::new() };
        let (a_ns, a_addr) = self.node(a)?.clone();
        for other in others {
            let (o_ns, o_addr) = self.node(other)?.clone();
            for (ns, to) in [(a_ns.clone(), o_addr), (o_ns, a_addr)] {
                let to_text = to.to_string();
                ip(&[
                    "-n",
                    &ns,
                    "neigh",
                    "replace",
                    &to_text,
                    "lladdr",
                    NOWHERE_MAC,
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ])
                .await?;
                cut.routes.push((ns, to));
            }
        }
        Ok(cut)
    }

    /// Adds `tc netem` delay and loss on `node`'s link (both directions of its own traffic
    /// leave through its `eth0` or the bridge port). `Ok(false)` when the kernel has no netem.
    pub async fn netem(&self, node: &str, delay_ms: u32, loss_percent: u32) -> Result<bool> {
        let (ns, _) = self.node(node)?;
        let index = self
            .nodes
            .iter()
            .position(|(name, _)| name == ns)
            .context("node index")?;
        let delay = format!("{delay_ms}ms");
        let loss = format!("{loss_percent}%");
        let args = ["root", "netem", "delay", &delay, "loss", &loss];
        let port = format!("v{index}");
        for (ns, dev) in [
            (ns.as_str(), "eth0"),
            (self.bridge_ns.as_str(), port.as_str()),
        ] {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev])
                .args(args);
            let output = cmd.output().await.context("running tc")?;
            if !output.status.success() {
                let stderr = String::from_utf8_lossy(&output.stderr);
                if stderr.contains("qdisc kind is unknown") {
                    return Ok(false);
                }
                bail!("tc qdisc replace dev {dev} in {ns}: {}", stderr.trim());
            }
        }
        Ok(true)
    }

    /// Removes the netem qdiscs of `node`.
    pub async fn clear_netem(&self, node: &str) -> Result<()> {
        let (ns, _) = self.node(node)?;
        let index = self
            .nodes
            .iter()
            .position(|(name, _)| name == ns)
            .context("node index")?;
        let port = format!("v{index}");
        for (ns, dev) in [
            (ns.as_str(), "eth0"),
            (self.bridge_ns.as_str(), port.as_str()),
        ] {
            let _ = Command::new("ip")
                .args([
                    "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root",
                ])
                .output()
                .await;
        }
        Ok(())
    }

    /// Gives `node` a hosts file: `ip netns exec` bind-mounts `/etc/netns/<ns>/hosts` over
    /// `/etc/hosts` for the programs it starts there (started after this call). `entries`
    /// are `IP NAME` lines; localhost is added. Removed with the network.
    pub fn hosts(&self, node: &str, entries: &[(Ipv4Addr, &str)]) -> Result<()> {
        let dir = std::path::Path::new(NETNS_ETC).join(self.ns(node)?);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut text = String::from("127.0.0.1 localhost\n");
        for (addr, name) in entries {
            text.push_str(&format!("{addr} {name}\n"));
        }
        std::fs::write(dir.join("hosts"), text)?;
        Ok(())
    }

    /// The command prefix that runs a program in `node`'s namespace.
    pub fn exec_prefix(&self, node: &str) -> Result<Vec<String>> {
        Ok(vec![
            "ip".to_owned(),
            "netns".to_owned(),
            "exec".to_owned(),
            self.ns(node)?.to_owned(),
        ])
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        // Deleting a namespace also deletes the veth ends in it. Processes still inside keep
        // it alive until they exit; their owners kill them on drop.
        for (ns, _) in &self.nodes {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .output();
            let _ = std::fs::remove_dir_all(std::path::Path::new(NETNS_ETC).join(ns));
        }
        // Only if empty: other users of `ip netns` may keep files there.
        let _ = std::fs::remove_dir(NETNS_ETC);
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.bridge_ns])
            .output();
    }
}

// === impl Cut ===

impl Cut {
    /// Heals the cut now (dropping it does the same, best effort).
    pub async fn heal(mut self) -> Result<()> {
        for (ns, to) in std::mem::take(&mut self.routes) {
            ip(&["-n", &ns, "neigh", "del", &to.to_string(), "dev", "eth0"]).await?;
        }
        Ok(())
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        for (ns, to) in &self.routes {
            let _ = std::process::Command::new("ip")
                .args(["-n", ns, "neigh", "del", &to.to_string(), "dev", "eth0"])
                .output();
        }
    }
}

/// Runs `ip ARGS`, failing with its stderr.
async fn ip(args: &[&str]) -> Result<Output> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .await
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// Deletes the namespaces of earlier runs whose process is gone.
async fn remove_leftovers() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output().await else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('x').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .output()
                .await;
            let _ = std::fs::remove_dir_all(std::path::Path::new(NETNS_ETC).join(name));
        }
    }
}
