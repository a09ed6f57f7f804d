//! `pxe-service`: load and check config (exit 2 when bad), init telemetry, bind TFTP and HTTP,
//! connect the database, serve until SIGTERM/SIGINT. `--dnsmasq` prints the DHCP options file.
use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;

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
    let cfg = match pxe_service::config::PxeFileConfig::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "pxe-service: bad configuration: {}",
                common::ErrorChain(&e)
            );
            return ExitCode::from(u8::try_from(common::EXIT_BAD_CONFIG).unwrap_or(2));
        }
    };
    if args.dnsmasq {
        let text = pxe_service::dnsmasq::render(&cfg.pxe, &Default::default());
        return std::io::stdout()
            .write_all(text.as_bytes())
            .map_or(ExitCode::FAILURE, |()| ExitCode::SUCCESS);
    }
    let _telemetry = common::telemetry::init_for("pxe-service", &cfg.telemetry);
    let Err(e) = pxe_service::serve(cfg, common::shutdown::signal_token()).await else {
        return ExitCode::SUCCESS;
    };
    tracing::error!(error = %common::ErrorChain(&e), "pxe-service failed");
    ExitCode::FAILURE
}
