//! Latency of RFC 2136 updates ([`gatehouse_cp::dns_update`]) against a real DNS server: adds
//! and removes one `_acme-challenge` TXT record `ROUNDS` times, one update at a time, and
//! prints the median and 99th percentile of each.
//!
//! ```text
//! cargo run -p gatehouse-cp --example dns_update_latency -- \
//!     SERVER ZONE KEY_FILE [ROUNDS]
//! ```
//! The figures and the named setup used are in BENCHMARKS.md ("ACME data plane and DNS-01").

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gatehouse_cp::dns_update::AcmeDnsSettings;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, zone, key_file, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: dns_update_latency SERVER ZONE KEY_FILE [ROUNDS]");
    };
    let rounds: usize = rest.first().map_or(Ok(500), |r| r.parse())?;
    let key_file = PathBuf::from(key_file);
    let updater = AcmeDnsSettings::from_flags(Some(server), Some(zone), Some(&key_file))?
        .ok_or_else(|| anyhow::anyhow!("no settings"))?
        .updater()?;
    let name = format!("_acme-challenge.latency.{zone}");
    let (mut adds, mut removes) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let value = format!("value-{round}");
        let started = Instant::now();
        updater.add_txt(&name, &value, 60).await?;
        adds.push(started.elapsed());
        let started = Instant::now();
        updater.remove_txt(&name, &value).await?;
        removes.push(started.elapsed());
    }
    for (what, mut times) in [("add_txt", adds), ("remove_txt", removes)] {
        times.sort();
        let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
        println!(
            "{what}: {rounds} updates, median {:?}, p99 {:?}, max {:?}",
            at(0.5),
            at(0.99),
            times.last().copied().unwrap_or(Duration::ZERO)
        );
    }
    Ok(())
}
