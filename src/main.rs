//! natterd: parses flags, binds the listener, and runs the server loop.
//! Nothing else lives here.

use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;

use clap::Parser;
use natter::{Config, Server};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = Config::parse();
    if let Err(problem) = config.validate() {
        eprintln!("natterd: {problem}");
        return ExitCode::from(2);
    }
    let addr = SocketAddr::new(config.bind, config.port);
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("natterd: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut server = match Server::new(listener, config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("natterd: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = server.handle_signals() {
        eprintln!("natterd: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    match server.local_addr() {
        // Scripts and tests wait for exactly this line.
        Ok(addr) => println!("listening on {addr}"),
        Err(e) => {
            eprintln!("natterd: {e}");
            return ExitCode::FAILURE;
        }
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("natterd: event loop failed: {e}");
            ExitCode::FAILURE
        }
    }
}
