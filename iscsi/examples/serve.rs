//! Serves a file as an iSCSI target until Ctrl-C, for trying initiators by hand:
//! `cargo run -p iscsi --example serve -- DISK.img 127.0.0.1:3260 iqn.2026-12.io.ferric:disk [USER SECRET]`.

use std::error::Error;
use std::sync::Arc;

use iscsi::target::{self, TargetConfig};
use iscsi::{ChapCredentials, FileBackend};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, addr, iqn, rest @ ..] = &args[..] else {
        return Err("usage: serve FILE ADDR:PORT IQN [USER SECRET]".into());
    };
    let mut config = TargetConfig::new(iqn.clone());
    if let [user, secret] = rest {
        config.chap = Some(ChapCredentials::new(user.clone(), secret.clone()));
    }
    let backend = Arc::new(FileBackend::open(std::path::Path::new(path))?);
    let listener = tokio::net::TcpListener::bind(addr.as_str()).await?;
    let token = CancellationToken::new();
    let handle = target::spawn(listener, config, backend, &token)?;
    tokio::signal::ctrl_c().await?;
    handle.shutdown(std::time::Duration::from_secs(5)).await;
    Ok(())
}
