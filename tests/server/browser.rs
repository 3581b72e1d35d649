//! The chat page in a real browser: headless Chromium driven through
//! chromedriver (see `webdriver.rs`), against natterd's `--web` listener.
//! People log in on the page, talk to each other and to a terminal user,
//! and markup in a message stays text. These fail, never skip, when the
//! browser cannot start.

use std::net::SocketAddr;
use std::sync::Mutex;

use serde_json::json;

use crate::util::Server;
use crate::webdriver::{Browser, Driver};

/// One browser test at a time: each runs Chromium processes, heavy for a
/// 2-core machine running the other tests beside them.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const ENTER: &str = "\u{E007}";

fn start() -> (Server, SocketAddr) {
    let server = Server::start(&["--web", "127.0.0.1:0"]);
    let web = server.web.expect("natterd printed its web address");
    (server, web)
}

/// Opens the page and logs in (`login`) or registers (`register`).
fn sign_in(b: &Browser, web: SocketAddr, verb: &str, name: &str) {
    sign_in_at(b, &format!("http://{web}/"), verb, name);
}

fn sign_in_at(b: &Browser, url: &str, verb: &str, name: &str) {
    b.goto(url);
    b.type_into(&b.find("#login-name"), name);
    b.type_into(&b.find("#login-password"), &format!("password-{name}"));
    b.click(&b.find(&format!("#{verb}-button")));
    b.wait_for(
        &format!("{name} signed in on the page"),
        "return !document.getElementById('chat-view').hidden",
        json!([]),
    );
}

fn open_conversation(b: &Browser, peer: &str) {
    b.type_into(&b.find("#open-name"), &format!("{peer}{ENTER}"));
    b.wait_for(
        &format!("the conversation with {peer} opened"),
        "return document.getElementById('peer-name').textContent === arguments[0]",
        json!([peer]),
    );
}

fn click_person(b: &Browser, peer: &str) {
    b.click(&b.find(&format!("#people li[data-peer=\"{peer}\"] button")));
    b.wait_for(
        &format!("the conversation with {peer} opened"),
        "return document.getElementById('peer-name').textContent === arguments[0]",
        json!([peer]),
    );
}

fn send(b: &Browser, text: &str) {
    b.type_into(&b.find("#composer-text"), &format!("{text}{ENTER}"));
    wait_for_message(b, text);
}

/// Waits until the open conversation shows a message whose text is exactly `text`.
fn wait_for_message(b: &Browser, text: &str) {
    b.wait_for(
        &format!("the message {text:?} on the page"),
        "return [...document.querySelectorAll('#messages .text')]\
         .some(e => e.textContent === arguments[0])",
        json!([text]),
    );
}

fn wait_for_unread(b: &Browser, peer: &str, count: u32) {
    wait_for_unread_within(b, peer, count, crate::util::TIMEOUT);
}

fn wait_for_unread_within(b: &Browser, peer: &str, count: u32, within: std::time::Duration) {
    let until = std::time::Instant::now() + within;
    loop {
        let shown = b.script(
            "const n = document.querySelector(`#people li[data-peer=\"${arguments[0]}\"] .unread`);\
             return n === null ? null : n.textContent",
            json!([peer]),
        );
        if shown == json!(count.to_string()) {
            return;
        }
        if std::time::Instant::now() >= until {
            // What the page knows, so a failure says whether it was offline
            // or online and missing the messages.
            let state = b.script(
                "return [document.getElementById('connection').textContent,\
                 Array.from(document.querySelectorAll('#people li')).map(l => l.textContent)]",
                json!([]),
            );
            panic!("{count} unread from {peer}: the page shows {shown}; connection and people: {state}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn two_people_talk_in_their_browsers_and_markup_stays_text() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (_server, web) = start();
    let driver = Driver::start();
    let alice = driver.browser();
    let bob = driver.browser();
    sign_in(&alice, web, "register", "alice");
    sign_in(&bob, web, "register", "bob");

    open_conversation(&alice, "bob");
    send(&alice, "Hi Bob, are you there?");
    wait_for_unread(&bob, "alice", 1);
    click_person(&bob, "alice");
    wait_for_message(&bob, "Hi Bob, are you there?");
    send(&bob, "Yes! Lunch at noon?");
    wait_for_message(&alice, "Yes! Lunch at noon?");

    let markup = "<img src=x onerror=alert(1)>";
    send(&alice, markup);
    wait_for_message(&bob, markup);
    // Shown as its characters; no element was made of it (and no alert
    // opened: the driver would refuse every command after one).
    let images = bob.script(
        "return document.querySelectorAll('#messages img').length",
        json!([]),
    );
    assert_eq!(images, json!(0));
    send(&bob, "Ha, nice try: that stays text.");
    wait_for_message(&alice, "Ha, nice try: that stays text.");

    let png = bob.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("web.png");
    std::fs::write(&path, png).expect("write the screenshot");
    eprintln!("screenshot of the page: {}", path.display());
}

#[test]
fn a_message_to_someone_offline_waits_for_their_login_on_the_page() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (server, web) = start();
    // carol has an account and is not logged in anywhere.
    let mut carol = server.user("carol");
    assert_eq!(carol.cmd1("quit"), "+ bye");
    let driver = Driver::start();
    let dave = driver.browser();
    sign_in(&dave, web, "register", "dave");
    open_conversation(&dave, "carol");
    send(&dave, "While you were away");
    let page = driver.browser();
    sign_in(&page, web, "login", "carol");
    wait_for_unread(&page, "dave", 1);
    click_person(&page, "dave");
    wait_for_message(&page, "While you were away");
}

#[test]
fn a_terminal_user_and_a_browser_user_talk() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (server, web) = start();
    let mut terminal = server.user("tom");
    let driver = Driver::start();
    let page = driver.browser();
    sign_in(&page, web, "register", "erin");
    assert_eq!(
        terminal.cmd1("send erin hello from a terminal"),
        "+ delivered"
    );
    wait_for_unread(&page, "tom", 1);
    click_person(&page, "tom");
    wait_for_message(&page, "hello from a terminal");
    send(&page, "hello from a browser");
    let event = terminal.event();
    assert!(event.starts_with("* msg erin "), "{event}");
    assert!(event.ends_with(" hello from a browser"), "{event}");
    // Pasted lines become one line, and the page says so.
    page.script(
        "const input = document.getElementById('composer-text');\
         const data = new DataTransfer();\
         data.setData('text/plain', 'first line\\nsecond line');\
         input.focus();\
         input.dispatchEvent(new ClipboardEvent('paste', \
             { clipboardData: data, bubbles: true, cancelable: true }));",
        json!([]),
    );
    let value = page.script(
        "return document.getElementById('composer-text').value",
        json!([]),
    );
    assert_eq!(value, json!("first line second line"));
    let note = page.text(&page.find("#composer-note"));
    assert!(note.contains("became spaces"), "{note}");
    page.type_into(&page.find("#composer-text"), ENTER);
    wait_for_message(&page, "first line second line");
    let event = terminal.event();
    assert!(event.ends_with(" first line second line"), "{event}");
}

#[test]
fn the_page_over_https_talks_over_wss() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(&["--tls-self-signed", "localhost", "--web-tls", "127.0.0.1:0"]);
    let web = server.web_tls.expect("natterd printed its https address");
    let mut terminal = server.user("tom");
    let driver = Driver::start();
    // The certificate is self-signed: this browser is told to accept it.
    let page = driver.browser_with(&["--ignore-certificate-errors"]);
    sign_in_at(
        &page,
        &format!("https://localhost:{}/", web.port()),
        "register",
        "erin",
    );
    let scheme = page.script("return location.protocol", json!([]));
    assert_eq!(scheme, json!("https:"));
    open_conversation(&page, "tom");
    send(&page, "hello over wss");
    let event = terminal.event();
    assert!(
        event.starts_with("* msg erin ") && event.ends_with(" hello over wss"),
        "{event}"
    );
}

#[test]
fn the_page_logs_in_again_after_a_restart_loads_older_history_and_blocks() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // A fixed web port, so the restarted server is where the page left it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let web_arg = format!("127.0.0.1:{port}");
    let server = Server::start(&["--web", &web_arg]);
    let web = server.web.expect("natterd printed its web address");
    let driver = Driver::start();
    let page = driver.browser();
    sign_in(&page, web, "register", "erin");
    // The page loses its socket (`* bye shutdown`, close 1001) and, with
    // the password it kept in memory, logs in again once the server is back.
    let server = server.restart();
    let mut terminal = server.user("tom");
    // Sixty messages: more than the 50 history rows a conversation opens with.
    for n in 0..60 {
        let text = if n == 0 {
            "after the restart".to_string()
        } else {
            format!("message {n}")
        };
        let sent = terminal.cmd1(&format!("send erin {text}"));
        assert!(sent == "+ delivered" || sent == "+ stored", "{sent}");
    }
    // The page retries after 1, 2, 4, 8, 16, 30 s (each up to 30 % more):
    // a restart slowed down by a busy machine (CI runs the browser tests
    // beside the others) can push its login to the 16 or 30 s attempt,
    // about 40 s or 70 s after the restart began.
    wait_for_unread_within(&page, "tom", 60, std::time::Duration::from_secs(90));
    page.wait_for(
        "the page back online",
        "return document.getElementById('connection').textContent === 'online'",
        json!([]),
    );
    click_person(&page, "tom");
    wait_for_message(&page, "message 59");
    let shown = page.script(
        "return document.querySelectorAll('#messages .text').length",
        json!([]),
    );
    assert_eq!(shown, json!(50));
    // Scrolling to the top loads the older ones.
    page.script(
        "document.getElementById('messages').scrollTop = 0",
        json!([]),
    );
    wait_for_message(&page, "after the restart");
    page.click(&page.find("#block-button"));
    page.wait_for(
        "the block done",
        "return document.getElementById('block-button').textContent === 'Unblock'",
        json!([]),
    );
    let refused = terminal.cmd1("send erin are you there?");
    assert!(refused.starts_with("- BLOCKED"), "{refused}");
}
