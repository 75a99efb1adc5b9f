//! `gatehouse-cp`: the Gatehouse control plane binary. Parses the command line, sets up logging
//! and the TLS crypto provider, and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use gatehouse_cp::config::{Cli, Command};

/// Exit code for bad configuration (sysexits `EX_USAGE`).
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One crypto provider for the whole process, before anything builds a rustls config.
    if rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("gatehouse-cp: a rustls crypto provider was already installed");
    }
    if let Command::Pki(command) = &cli.command {
        return match gatehouse_cp::pki::run(command, &mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("gatehouse-cp: {error}");
                ExitCode::from(if error.is_usage() { EX_USAGE } else { 1 })
            }
        };
    }
    let settings = match cli.settings() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("gatehouse-cp: {error}");
            return ExitCode::from(EX_USAGE);
        }
    };
    gatehouse_cp::logging::init(&settings.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("gatehouse-cp: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match &cli.command {
            Command::Serve(_) => gatehouse_cp::serve(settings).await,
            Command::Migrate(_) => gatehouse_cp::migrate(&settings).await,
            Command::AdminToken(command) => {
                gatehouse_cp::credentials::run_token(command, &settings, &mut std::io::stdout())
                    .await
            }
            Command::AdminCert(command) => {
                gatehouse_cp::credentials::run_cert(command, &settings, &mut std::io::stdout())
                    .await
            }
            Command::ClusterToken(command) => {
                gatehouse_cp::tokens::run(command, &mut std::io::stdout().lock()).await
            }
            Command::Keyring(command) => {
                gatehouse_cp::keyring::run(command, &mut std::io::stdout().lock()).await
            }
            Command::Config(command) => {
                gatehouse_cp::declarative::run(command, &mut std::io::stdout()).await
            }
            // Handled above, before logging and the runtime.
            Command::Pki(_) => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error @ gatehouse_cp::Error::Config(_)) => {
            eprintln!("gatehouse-cp: {error}");
            ExitCode::from(EX_USAGE)
        }
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}
