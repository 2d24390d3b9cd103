//! Management: the HTTP API in EMQX v4's shape (`api.rs`) on 8081, the dashboard page
//! (`dashboard.rs`) on 18083, which serves the same API so the page stays same-origin,
//! Prometheus metrics (`prometheus.rs`) and Mosquitto's `$SYS` tree (`sys.rs`). The HTTP
//! server itself is `http.rs`.

pub mod api;
pub mod dashboard;
pub mod history;
pub mod http;
pub mod login;
pub mod prometheus;
pub mod sys;
pub mod topics;

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use smol::{Async, Executor, Task};

pub use api::{Admin, ListenerView};

/// The API secret: the configured one, or the one in `<data_dir>/api_secret`, made
/// (random, mode 0600) at first start. No password works out of the box.
pub fn secret(configured: Option<&str>, app_id: &str, data_dir: &Path) -> Result<String, String> {
    if let Some(secret) = configured {
        return Ok(secret.to_owned());
    }
    let path = data_dir.join("api_secret");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(format!(
                "{}: cannot read the API secret: {e}",
                path.display()
            ));
        }
    }
    let mut random = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
        .map_err(|e| format!("cannot read /dev/urandom for the API secret: {e}"))?;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random);
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("{}: cannot create: {e}", data_dir.display()))?;
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
    }
    .map_err(|e| format!("{}: cannot write the API secret: {e}", path.display()))?;
    writeln!(file, "{secret}")
        .and_then(|_| file.sync_all())
        .map_err(|e| format!("{}: cannot write the API secret: {e}", path.display()))?;
    log::info!(
        "no [api] app_secret configured: generated one into {} (app id {app_id:?}); the API and dashboard log in with it",
        path.display()
    );
    Ok(secret)
}

/// Samples the broker into `admin`'s history every [`history::INTERVAL`], from now.
pub async fn record_history(admin: Arc<Admin>) {
    loop {
        admin.history.push(admin.sample_now());
        smol::Timer::after(history::INTERVAL).await;
    }
}

/// Serves `admin` on `socket` (HTTPS with `tls`); with `dashboard`, the page too.
pub fn serve(
    executor: &Arc<Executor<'static>>,
    socket: Async<TcpListener>,
    admin: Arc<Admin>,
    dashboard: bool,
    tls: Option<Arc<crate::transport::tls::Tls>>,
) -> Task<()> {
    let handler = Arc::new(move |req| admin.handle(req, dashboard));
    executor.spawn(http::serve(socket, executor.clone(), handler, tls))
}
