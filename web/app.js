// The chat page: one WebSocket to natterd speaking the line protocol, one
// line per frame. Commands are answered in order, so replies are matched
// to commands with a queue; events (`* ...`) go to the conversations.
// The password lives only in this module's memory while logged in (to
// log in again after a reconnect): never in a URL, storage or a cookie.

import {
  isName,
  oneLine,
  parseCompletion,
  parseEvent,
  parseHistoryRow,
  parseInboxRow,
  parsePresenceRow,
} from "./line.js";
import * as view from "./view.js";

const $ = (id) => document.getElementById(id);

// How far back `wholast` looks for the people list (a week, its maximum).
const RECENT_MINUTES = 10080;
// How often the people list is refreshed.
const PRESENCE_EVERY_MS = 30000;
// History rows per load; scrolling to the top loads this many more.
const HISTORY_STEP = 50;
const HISTORY_MAX = 1000;
// Reconnect backoff: doubling from the first delay up to the last.
const BACKOFF_FIRST_MS = 1000;
const BACKOFF_MAX_MS = 30000;
// Goodbyes after which reconnecting would be wrong or useless.
const FINAL_BYES = new Set(["quit", "replaced", "banned", "kicked"]);

const chat = {
  me: "",
  // Conversations by peer name; "" holds broadcasts.
  conversations: new Map(),
  current: "",
  blocked: new Set(),
};

let socket = null;
let credentials = null; // { name, password } while logged in
let pending = []; // commands awaiting their reply: { lines, resolve }
let backoff = BACKOFF_FIRST_MS;
let reconnectTimer = null;
let presenceTimer = null;
let lastBye = "";

function conversation(name) {
  let convo = chat.conversations.get(name);
  if (!convo) {
    convo = { messages: [], unread: 0, online: false, latest: "", loaded: 0 };
    chat.conversations.set(name, convo);
  }
  return convo;
}

function redraw(keepScroll) {
  view.drawPeople(chat, openConversation);
  view.drawConversation(chat, keepScroll);
}

// ----- the socket -------------------------------------------------------

function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

function connect() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(socketUrl());
    ws.onopen = () => {
      socket = ws;
      resolve();
    };
    ws.onmessage = (e) => onLine(String(e.data));
    ws.onclose = (e) => {
      if (socket !== ws) {
        reject(new Error("cannot reach the server"));
        return;
      }
      socket = null;
      onClosed(e.reason || lastBye);
    };
  });
}

// Sends a command; resolves to { rows, done } when its completion comes.
function command(line) {
  return new Promise((resolve, reject) => {
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      reject(new Error("not connected"));
      return;
    }
    pending.push({ rows: [], resolve, reject });
    socket.send(line);
  });
}

function onLine(line) {
  if (line.startsWith("* ")) {
    onEvent(parseEvent(line));
    return;
  }
  const waiting = pending[0];
  if (!waiting) return;
  if (line.startsWith("= ")) {
    waiting.rows.push(line);
    return;
  }
  pending.shift();
  waiting.resolve({ rows: waiting.rows, done: parseCompletion(line) });
}

function onClosed(reason) {
  for (const waiting of pending) waiting.reject(new Error("connection lost"));
  pending = [];
  clearInterval(presenceTimer);
  if (!credentials) return;
  if (FINAL_BYES.has(reason)) {
    credentials = null;
    const why = {
      quit: "Logged out.",
      replaced: "Logged in elsewhere: this page was closed.",
      banned: "This account is banned.",
      kicked: "The operator closed this session.",
    }[reason];
    view.showLogin(why);
    return;
  }
  scheduleReconnect();
}

function scheduleReconnect() {
  const delay = backoff + Math.floor(Math.random() * backoff * 0.3);
  backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
  view.setConnection(`offline: reconnecting in ${Math.round(delay / 1000)} s`);
  clearTimeout(reconnectTimer);
  reconnectTimer = setTimeout(async () => {
    try {
      await connect();
      const done = await logIn("login");
      if (!done.ok) {
        credentials = null;
        view.showLogin(done.text);
      }
    } catch {
      scheduleReconnect();
    }
  }, delay);
}

// ----- logging in ---------------------------------------------------------

// Logs in (or registers) with `credentials`, then loads the inbox, the
// people and the blocked list.
async function logIn(verb) {
  const { name, password } = credentials;
  const { done } = await command(`${verb} ${name} ${password}`);
  if (!done.ok) return done;
  backoff = BACKOFF_FIRST_MS;
  chat.me = name.toLowerCase();
  view.showChat(chat.me);
  view.setConnection("online");
  const blocked = await command("blocked");
  chat.blocked = new Set(blocked.rows.map((r) => r.slice(2)));
  await loadInbox();
  await refreshPresence();
  clearInterval(presenceTimer);
  presenceTimer = setInterval(() => refreshPresence().catch(() => {}), PRESENCE_EVERY_MS);
  if (chat.current !== "") await loadHistory(chat.current, conversation(chat.current).loaded || HISTORY_STEP);
  redraw();
  return done;
}

// Unread messages go into their conversations (and count as unread there).
// natterd may show a message twice rather than lose it (pushed while the
// inbox was read, say): one already here is not added again.
async function loadInbox() {
  const key = (m) => `${m.from}\n${m.time}\n${m.text}`;
  const shown = new Map();
  for (const convo of chat.conversations.values()) {
    for (const m of convo.messages) shown.set(key(m), (shown.get(key(m)) || 0) + 1);
  }
  for (;;) {
    const { rows, done } = await command("inbox");
    for (const row of rows) {
      const m = parseInboxRow(row);
      const seen = shown.get(key(m)) || 0;
      if (seen > 0) {
        shown.set(key(m), seen - 1);
        continue;
      }
      addMessage(m.from, { from: m.from, time: m.time, text: m.text }, true);
    }
    if (!done.ok || !done.text.includes("more waiting")) return;
  }
}

async function refreshPresence() {
  const { rows } = await command(`wholast ${RECENT_MINUTES}`);
  for (const convo of chat.conversations.values()) convo.online = false;
  for (const row of rows) {
    const p = parsePresenceRow(row);
    const convo = conversation(p.user);
    convo.online = p.online;
    if (!p.online && p.seen > convo.latest) convo.latest = p.seen;
  }
  view.drawPeople(chat, openConversation);
}

// ----- conversations ------------------------------------------------------

function addMessage(peer, message, unread) {
  const convo = conversation(peer);
  convo.messages.push(message);
  if (message.time > convo.latest) convo.latest = message.time;
  if (unread) convo.unread += 1;
}

async function loadHistory(peer, count) {
  const { rows, done } = await command(`history ${peer} ${count}`);
  if (!done.ok) return;
  const convo = conversation(peer);
  convo.messages = rows.map(parseHistoryRow).map((r) => ({ from: r.from, time: r.time, text: r.text }));
  convo.loaded = count;
  convo.complete = rows.length < count;
}

async function openConversation(name) {
  chat.current = name;
  const convo = conversation(name);
  convo.unread = 0;
  view.setNote("");
  if (name !== "") {
    try {
      await loadHistory(name, HISTORY_STEP);
    } catch {
      // Offline: show what is here; the reconnect reloads it.
    }
  }
  redraw();
  $("composer-text").focus();
}

async function loadOlder() {
  const name = chat.current;
  const convo = chat.conversations.get(name);
  if (name === "" || !convo || convo.complete || convo.loadingOlder) return;
  if (convo.loaded >= HISTORY_MAX) return;
  convo.loadingOlder = true;
  try {
    await loadHistory(name, Math.min(convo.loaded + HISTORY_STEP, HISTORY_MAX));
    if (chat.current === name) view.drawConversation(chat, true);
  } finally {
    convo.loadingOlder = false;
  }
}

function notify(title, body) {
  if (!document.hidden || !("Notification" in window)) return;
  if (Notification.permission === "granted") new Notification(title, { body });
}

function onEvent(event) {
  if (event.kind === "msg" || event.kind === "broadcast") {
    const peer = event.kind === "msg" ? event.from : "";
    const watching = chat.current === peer && !document.hidden;
    addMessage(peer, { from: event.from, time: event.time, text: event.text }, !watching);
    conversation(event.from).online = true;
    redraw();
    notify(event.kind === "msg" ? event.from : `${event.from} (broadcast)`, event.text);
  } else if (event.kind === "bye") {
    lastBye = event.text;
  } else if (event.kind === "notice" && chat.me) {
    view.setNote(event.text);
  }
}

// ----- the controls ---------------------------------------------------------

async function submitLogin(verb) {
  const name = $("login-name").value.trim();
  const password = $("login-password").value;
  if (!isName(name)) {
    view.showLogin("A name starts with a letter: letters, digits, _ - . (32 at most).");
    return;
  }
  credentials = { name, password };
  $("login-password").value = "";
  try {
    if (!socket) await connect();
    const done = await logIn(verb);
    if (!done.ok) {
      credentials = null;
      view.showLogin(done.text);
    }
  } catch (e) {
    credentials = null;
    view.showLogin(e.message);
  }
}

async function send() {
  const input = $("composer-text");
  const { line, changed } = oneLine(input.value);
  const text = line.trim();
  if (text === "") return;
  const peer = chat.current;
  try {
    const { done } = await command(peer === "" ? `broadcast ${text}` : `send ${peer} ${text}`);
    if (!done.ok) {
      view.setNote(done.text);
      return;
    }
    input.value = "";
    addMessage(peer, { from: chat.me, time: new Date().toISOString().replace(/\.\d+Z$/, "Z"), text }, false);
    redraw();
    view.setNote(changed ? "Line breaks were sent as spaces: a message is one line." : "");
  } catch (e) {
    view.setNote(`Not sent: ${e.message}.`);
  }
}

async function toggleBlock() {
  const peer = chat.current;
  if (peer === "") return;
  const verb = chat.blocked.has(peer) ? "unblock" : "block";
  const { done } = await command(`${verb} ${peer}`);
  if (done.ok) {
    if (verb === "block") chat.blocked.add(peer);
    else chat.blocked.delete(peer);
  }
  view.setNote(done.ok ? "" : done.text);
  redraw(true);
}

function start() {
  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    submitLogin("login");
  });
  $("register-button").addEventListener("click", () => submitLogin("register"));
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  // A text input would drop pasted line breaks and glue the lines
  // together; they become spaces instead, and the page says so.
  $("composer-text").addEventListener("paste", (e) => {
    const pasted = e.clipboardData ? e.clipboardData.getData("text/plain") : "";
    const { line, changed } = oneLine(pasted);
    if (!changed) return;
    e.preventDefault();
    const input = e.target;
    input.setRangeText(line, input.selectionStart, input.selectionEnd, "end");
    view.setNote("Line breaks in what you pasted became spaces: a message is one line.");
  });
  $("open-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const name = $("open-name").value.trim().toLowerCase();
    if (!isName(name) || name === chat.me) return;
    $("open-name").value = "";
    openConversation(name);
  });
  $("messages").addEventListener("scroll", () => {
    if ($("messages").scrollTop === 0) loadOlder().catch(() => {});
  });
  $("block-button").addEventListener("click", () => toggleBlock().catch(() => {}));
  $("logout-button").addEventListener("click", () => {
    credentials = null;
    clearTimeout(reconnectTimer);
    if (socket) socket.send("quit");
    chat.conversations = new Map();
    chat.current = "";
    chat.me = "";
    view.showLogin("Logged out.");
  });
  $("notify-button").addEventListener("click", () => {
    if ("Notification" in window) Notification.requestPermission();
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && chat.me) {
      conversation(chat.current).unread = 0;
      redraw(true);
    }
  });
  conversation("");
  view.showLogin("");
}

start();
