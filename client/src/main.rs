//! The natter terminal client. Placeholder until the client issue lands:
//! it only says so, so the workspace builds and nobody mistakes it for a client.

fn main() {
    eprintln!(
        "natter: the terminal client is not written yet; use netcat or telnet (see README.md)"
    );
    std::process::exit(2);
}
