//! natterd: parses flags (and the `--config` file), binds the listeners,
//! and runs the server loop. Nothing else lives here.

use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;

use natter::config::Flags;
use natter::{startup, tls, Config, Listeners, Server};

fn main() -> ExitCode {
    let flags = Flags::parse();
    let config = match Config::load(&flags) {
        Ok(config) => config,
        Err(problem) => {
            eprintln!("natterd: {problem}");
            return ExitCode::FAILURE;
        }
    };
    natter::logging::init(config.log_format);
    match start(config, flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            eprintln!("natterd: {problem}");
            ExitCode::FAILURE
        }
    }
}

fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    startup::listen(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))
}

fn start(config: Config, flags: Flags) -> Result<(), String> {
    config.validate()?;
    startup::check_data_dir(&config.data)?;
    let plain = match config.no_plaintext {
        true => None,
        false => Some(bind(SocketAddr::new(config.bind, config.port))?),
    };
    let mut fingerprint = None;
    let tls = if config.tls_enabled() {
        let (cert, key) = match (&config.tls_self_signed, &config.tls_cert, &config.tls_key) {
            (Some(names), _, _) => tls::self_signed(&config.data, names)?,
            (None, Some(cert), Some(key)) => (cert.clone(), key.clone()),
            _ => return Err("--tls-cert and --tls-key go together".into()),
        };
        let setup = tls::load(&cert, &key)?;
        fingerprint = Some(setup.fingerprint);
        let listener = bind(SocketAddr::new(config.bind, config.tls_port))?;
        Some((listener, setup.config))
    } else {
        None
    };
    let settings = config.clone();
    let mut server =
        Server::with_listeners(Listeners { plain, tls }, config).map_err(|e| e.to_string())?;
    server
        .handle_signals()
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    server.set_reload_flags(flags);
    let plain_addr = server.local_addr().ok();
    let tls_addr = fingerprint.as_ref().and_then(|_| server.tls_addr().ok());
    log::info!("{}", startup::banner(&settings, plain_addr, tls_addr));
    // Scripts and tests wait for these lines; the plaintext one comes first.
    if let Some(addr) = plain_addr {
        println!("listening on {addr}");
    }
    if let (Some(addr), Some(fingerprint)) = (tls_addr, fingerprint) {
        println!("listening on {addr} tls sha256 {fingerprint}");
    }
    if let Some(addr) = server.metrics_addr() {
        println!("metrics on http://{addr}/metrics");
    }
    if let Some(addr) = server.web_addr() {
        println!("web on http://{addr}/");
    }
    if let Some(addr) = server.web_tls_addr() {
        println!("web on https://{addr}/");
    }
    server.run().map_err(|e| format!("event loop failed: {e}"))
}
