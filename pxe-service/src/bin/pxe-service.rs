//! `pxe-service`: load and check config (exit 2 when bad), init telemetry, bind TFTP and HTTP,
//! open the database (and migrate it unless `database.migrate_on_start` is off), serve until
//! SIGTERM/SIGINT. `--dnsmasq` prints the DHCP options file instead.
use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use common::shutdown::{DEFAULT_DRAIN_TIMEOUT, Shutdown};
use pxe_service::config::PxeFileConfig;

/// The service allocator: much faster than the C library's under many threads.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(version, about = "Ferric's TFTP and HTTP boot server")]
struct Args {
    /// TOML config file; FERRIC_<SECTION>__<KEY> env variables override it.
    #[arg(long, short, env = "FERRIC_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Print a dnsmasq options file pointing machines at this service, then exit.
    #[arg(long)]
    dnsmasq: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match PxeFileConfig::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return common::bad_config("pxe-service", &e),
    };
    if args.dnsmasq {
        let text = pxe_service::dnsmasq::render(&cfg.pxe, &Default::default());
        return std::io::stdout()
            .write_all(text.as_bytes())
            .map_or(ExitCode::FAILURE, |()| ExitCode::SUCCESS);
    }
    let _telemetry = common::telemetry::init_for("pxe-service", &cfg.telemetry);
    let Err(e) = serve(cfg).await else { return ExitCode::SUCCESS };
    tracing::error!(error = format!("{e:#}"), "pxe-service failed");
    ExitCode::FAILURE
}

async fn serve(cfg: PxeFileConfig) -> anyhow::Result<()> {
    let (tftp_at, http_at) = (&cfg.pxe.tftp_bind, &cfg.pxe.http_bind);
    let tftp = tokio::net::UdpSocket::bind(tftp_at)
        .await
        .with_context(|| format!("binding TFTP to {tftp_at}"))?;
    let http = tokio::net::TcpListener::bind(http_at)
        .await
        .with_context(|| format!("binding HTTP to {http_at}"))?;
    let store = store::DataStore::open(&cfg.database).await.context("database")?;
    if cfg.database.migrate_on_start {
        store.migrate().await.context("migrating the database")?;
    }
    let shutdown = Shutdown::from_signals(DEFAULT_DRAIN_TIMEOUT);
    Ok(pxe_service::run(cfg.pxe, tftp, http, store, shutdown).await?)
}
