//! Logins under attack: what an attacker guessing passwords can and cannot
//! learn or do, with real sockets against the real server.

use crate::util::{Client, Server};

/// The code of a completion line (`- LOCKED`, `+ welcome`, ...).
fn code(line: &str) -> String {
    line.split(' ').take(2).collect::<Vec<_>>().join(" ")
}

/// Regression: 40 guesses sent at once all passed the lockout check (it was
/// counted only when a verification finished), and a right password that
/// finished while locked got `LOCKED` where wrong ones got `AUTHFAIL`.
#[test]
fn concurrent_guesses_are_held_to_the_limit_and_never_reveal_the_password() {
    let server = Server::start(&[
        "--hash-cost",
        "normal",
        "--max-login-failures",
        "3",
        "--block-time",
        "60",
    ]);
    drop(server.user("alice"));
    const GUESSES: usize = 40;
    // The right password goes last, where it is least likely to be among
    // the few guesses verified.
    let right = GUESSES - 1;
    let mut clients: Vec<Client> = (0..GUESSES).map(|_| server.connect()).collect();
    // Every line is out before the first verification (tens of ms) ends.
    for (i, c) in clients.iter_mut().enumerate() {
        if i == right {
            c.send("login alice password-alice");
        } else {
            c.send(&format!("login alice wrong-guess-{i}"));
        }
    }
    let replies: Vec<String> = clients
        .iter_mut()
        .map(|c| c.reply().pop().expect("completion"))
        .collect();
    eprintln!("{replies:#?}");
    let verified = replies
        .iter()
        .filter(|r| r.starts_with("- AUTHFAIL") || r.starts_with("+ welcome"))
        .count();
    assert!(
        verified <= 3,
        "{verified} guesses verified, the limit is 3: {replies:?}"
    );
    for r in &replies {
        assert!(
            ["- AUTHFAIL", "- LOCKED", "+ welcome"].contains(&code(r).as_str()),
            "{r}"
        );
    }
    let answer = code(&replies[right]);
    if answer != "+ welcome" {
        // The right password's answer must be one some wrong guess got too.
        assert!(
            replies
                .iter()
                .enumerate()
                .any(|(i, r)| i != right && code(r) == answer),
            "only the right password got {answer}: {replies:?}"
        );
    }
}
