//! `gatehouse-dp`: the Gatehouse data plane binary. Parses the settings, sets up logging and
//! the TLS crypto provider, runs the library until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use gatehouse_dp::config::Cli;

/// The allocator: mimalloc's thread-local free lists suit a proxy's many small, short-lived
/// allocations better than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for bad configuration (sysexits `EX_USAGE`).
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match cli.settings() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("gatehouse-dp: {error}");
            return ExitCode::from(EX_USAGE);
        }
    };
    // One crypto provider for the whole process, before anything builds a rustls config.
    if rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("gatehouse-dp: a rustls crypto provider was already installed");
    }
    gatehouse_dp::logging::init(&settings.log);
    // One worker: a current-thread runtime (nginx's one-worker model: no work stealing, no
    // cross-thread wake-ups between the client and upstream sides of a request).
    let mut builder = match settings.worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("gatehouse-dp: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(gatehouse_dp::run(settings, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::from(if error.is_config() { EX_USAGE } else { 1 })
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => tracing::info!("SIGTERM received"),
                () = interrupt => tracing::info!("SIGINT received"),
            }
        }
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM; only SIGINT stops the data plane");
            interrupt.await;
            tracing::info!("SIGINT received");
        }
    }
}
