//! `gatehouse-dp`: the Gatehouse data plane.
//!
//! The data plane receives configuration snapshots from the control plane and proxies traffic
//! with them. The sync client and the proxy are built by the config-sync and proxy work; until
//! then this binary only validates its command line and reports what it would connect to.

use clap::Parser;

/// Gatehouse data plane.
#[derive(Debug, Parser)]
#[command(name = "gatehouse-dp", version, about)]
struct Cli {
    /// Address of the control plane's cluster listener.
    #[arg(
        long,
        env = "GATEHOUSE_CLUSTER_CONTROL_PLANE",
        default_value = "127.0.0.1:8005"
    )]
    cluster_control_plane: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Keep the generated protocol linked in so the wire types stay checked by every build.
    let hello = gatehouse_proto::v1::Hello::default();
    anyhow::bail!(
        "gatehouse-dp: config sync with {} is not available in this build (protocol {:?})",
        cli.cluster_control_plane,
        hello.version
    )
}
