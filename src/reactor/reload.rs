//! Reloading settings without a restart (SIGHUP, `natterctl reload`): a
//! short-lived thread re-reads the config file (with the command line kept
//! from the start) and the TLS certificate and key, so the loop never
//! touches the disk; the loop then applies what can change live and logs
//! what needs a restart. No session is dropped. Part of the reactor; split
//! out by topic only.

use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;

use crate::config::{Config, Flags};
use crate::tls::{self, TlsSetup};

use super::Server;

/// Where reloads come from, and the one in progress.
#[derive(Default)]
pub(super) struct Reloader {
    /// The command line natterd started with; none for a server built in
    /// a test without one, which cannot reload.
    flags: Option<Flags>,
    /// The thread's answer, while one is out.
    pending: Option<Receiver<Read>>,
}

/// What the reload thread read: the settings and the certificate, or why not.
type Read = Result<(Config, Option<TlsSetup>), String>;

/// Reads what a reload applies: the settings, and the certificate if TLS is
/// on. Runs on its own thread.
fn read(flags: &Flags) -> Read {
    let config = Config::load(flags)?;
    config.validate()?;
    let tls = if config.tls_enabled() {
        let (cert, key) = match (&config.tls_self_signed, &config.tls_cert, &config.tls_key) {
            (Some(names), _, _) => tls::self_signed(&config.data, names)?,
            (None, Some(cert), Some(key)) => (cert.clone(), key.clone()),
            _ => return Err("--tls-cert and --tls-key go together".into()),
        };
        Some(tls::load(&cert, &key)?)
    } else {
        None
    };
    Ok((config, tls))
}

impl Server {
    /// Lets SIGHUP and `natterctl reload` re-read the settings from these
    /// flags (and the config file they name).
    pub fn set_reload_flags(&mut self, flags: Flags) {
        self.reloader.flags = Some(flags);
    }

    /// Starts a reload unless one is already out. Says what happened.
    pub(super) fn start_reload(&mut self) -> Result<&'static str, String> {
        if self.reloader.pending.is_some() {
            return Ok("a reload is already in progress");
        }
        let Some(flags) = self.reloader.flags.clone() else {
            return Err(
                "this server was not started from a command line; nothing to reload".into(),
            );
        };
        let (tx, rx) = mpsc::channel();
        let waker = Arc::clone(&self.waker);
        std::thread::Builder::new()
            .name("natter-reload".into())
            .spawn(move || {
                let _ = tx.send(read(&flags));
                let _ = waker.wake();
            })
            .map_err(|e| format!("cannot start the reload: {e}"))?;
        self.reloader.pending = Some(rx);
        log::info!("reloading settings");
        Ok("reloading; the log says what changed")
    }

    /// Applies a reload whose files have been read (called on every wake).
    pub(super) fn finish_reload(&mut self) {
        let Some(rx) = &self.reloader.pending else {
            return;
        };
        let result = match rx.try_recv() {
            Ok(result) => result,
            Err(mpsc::TryRecvError::Empty) => return,
            Err(mpsc::TryRecvError::Disconnected) => Err("the reload thread died".into()),
        };
        self.reloader.pending = None;
        match result {
            Ok((config, tls)) => self.apply_reload(config, tls),
            Err(e) => log::error!("reload failed: {e}; the running settings stay"),
        }
    }

    fn apply_reload(&mut self, new: Config, tls: Option<TlsSetup>) {
        let mut applied = Vec::new();
        if new.registration != self.config.registration {
            self.chat.set_registration(new.registration);
            applied.push(format!("registration {:?}", new.registration).to_lowercase());
        }
        if new.max_inbox != self.config.max_inbox {
            self.chat.set_max_inbox(new.max_inbox);
            applied.push(format!("max-inbox {}", new.max_inbox));
        }
        if new.output_budget() != self.output_budget {
            self.output_budget = new.output_budget();
            applied.push(format!("max-output-total {}", self.output_budget));
        }
        match (tls, self.tls_listener.as_mut()) {
            (Some(setup), Some((_, current))) => {
                // New connections get it; open ones keep theirs.
                if let Some((_, _, web)) = self.web_tls_listener.as_mut() {
                    *web = Arc::clone(&setup.config);
                }
                *current = setup.config;
                applied.push(format!(
                    "TLS certificate sha256 {} for new connections",
                    setup.fingerprint
                ));
            }
            (Some(_), None) | (None, Some(_)) => {
                log::warn!("reload: turning TLS on or off needs a restart");
            }
            (None, None) => {}
        }
        // Whatever else differs needs a restart: compare the rest.
        let mut rest = new.clone();
        rest.registration = self.config.registration;
        rest.max_inbox = self.config.max_inbox;
        rest.max_output_total = self.config.max_output_total;
        rest.tls_cert.clone_from(&self.config.tls_cert);
        rest.tls_key.clone_from(&self.config.tls_key);
        rest.tls_self_signed
            .clone_from(&self.config.tls_self_signed);
        if format!("{rest:?}") != format!("{:?}", self.config) {
            log::warn!(
                "reload: settings other than registration, max-inbox, max-output-total and the \
                 TLS certificate changed; they need a restart"
            );
        }
        self.config.registration = new.registration;
        self.config.max_inbox = new.max_inbox;
        self.config.max_output_total = new.max_output_total;
        if applied.is_empty() {
            log::info!("reload: nothing to change");
        } else {
            log::info!("reload: applied {}", applied.join(", "));
        }
    }
}
