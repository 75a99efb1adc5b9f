//! A TCP relay that adds delay and emulated loss, for the fleet fault suite on kernels without
//! `sch_netem`.
//!
//! `gatehouse-test-relay DELAY_MS LOSS_PERCENT LISTEN=TARGET [LISTEN=TARGET ...]` forwards each
//! connection accepted on `LISTEN` to `TARGET`. Every chunk read from either side is written to
//! the other `DELAY_MS` later (one-way delay, order kept). A relay cannot drop bytes of a TCP
//! stream, so loss is emulated by its effect on TCP: `LOSS_PERCENT` of the chunks are held back
//! one retransmission timeout more (2 × DELAY_MS + 200 ms), delaying those behind them too
//! (head-of-line blocking). It prints `relay listening addr=...` per listener and runs until
//! killed.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        bail!("usage: gatehouse-test-relay DELAY_MS LOSS_PERCENT LISTEN=TARGET...");
    }
    let delay = Duration::from_millis(args[0].parse().context("DELAY_MS")?);
    let loss: u32 = args[1].parse().context("LOSS_PERCENT")?;
    let mut tasks = Vec::new();
    for pair in &args[2..] {
        let (listen, target) = pair.split_once('=').context("LISTEN=TARGET")?;
        let listen: SocketAddr = listen.parse().context("LISTEN")?;
        let target: SocketAddr = target.parse().context("TARGET")?;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        println!("relay listening addr={listen} target={target}");
        tasks.push(tokio::spawn(serve(listener, target, delay, loss)));
    }
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}

async fn serve(listener: TcpListener, target: SocketAddr, delay: Duration, loss: u32) {
    let mut seed = seed();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let start = seed;
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let up = tokio::spawn(pump(client_read, server_write, delay, loss, start));
            let down = tokio::spawn(pump(server_read, client_write, delay, loss, !start));
            let _ = tokio::join!(up, down);
        });
    }
}

/// Copies `from` to `to`, each chunk `delay` later (plus a retransmission timeout for the
/// "lost" ones), in order.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    delay: Duration,
    loss: u32,
    mut state: u64,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let rto = delay * 2 + Duration::from_millis(200);
    let mut last_due = Instant::now();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // xorshift64: plenty for choosing which chunks are "lost".
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let lost = (state % 100) < u64::from(loss);
        let mut due = Instant::now() + delay;
        if lost {
            due += rto;
        }
        // In order: never before the chunk ahead of it.
        due = due.max(last_due);
        last_due = due;
        if tx.send((due, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    nanos | 1
}
