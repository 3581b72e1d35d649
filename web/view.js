// Drawing the page from the chat state. Every piece of text from the
// network goes in through textContent, never as markup.

const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// "2026-11-26T09:39:55Z" as local time of day (date too if not today).
export function shortTime(iso) {
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) return iso;
  const sameDay = when.toDateString() === new Date().toDateString();
  return sameDay
    ? when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : when.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
}

export function showLogin(status) {
  $("login-view").hidden = false;
  $("chat-view").hidden = true;
  $("login-status").textContent = status || "";
}

export function showChat(me) {
  $("login-view").hidden = true;
  $("chat-view").hidden = false;
  $("me").textContent = me;
}

export function setConnection(text) {
  $("connection").textContent = text;
}

export function setNote(text) {
  $("composer-note").textContent = text;
}

// The people list: online first, then by the latest message.
export function drawPeople(chat, onOpen) {
  const list = $("people");
  list.replaceChildren();
  const names = [...chat.conversations.keys()].sort((a, b) => {
    const ca = chat.conversations.get(a);
    const cb = chat.conversations.get(b);
    if (a === "") return -1;
    if (b === "") return 1;
    if (ca.online !== cb.online) return ca.online ? -1 : 1;
    return (cb.latest || "").localeCompare(ca.latest || "") || a.localeCompare(b);
  });
  for (const name of names) {
    const convo = chat.conversations.get(name);
    const item = el("li", "person");
    item.dataset.peer = name;
    if (name === chat.current) item.classList.add("current");
    if (convo.online) item.classList.add("online");
    if (chat.blocked.has(name)) item.classList.add("blocked");
    const button = el("button", "open", name === "" ? "Broadcasts" : name);
    button.type = "button";
    button.addEventListener("click", () => onOpen(name));
    item.append(button);
    if (convo.unread > 0) item.append(el("span", "unread", String(convo.unread)));
    list.append(item);
  }
}

// The open conversation's messages.
export function drawConversation(chat, keepScroll) {
  const name = chat.current;
  const convo = chat.conversations.get(name);
  $("peer-name").textContent = name === "" ? "Broadcasts" : name;
  const block = $("block-button");
  block.hidden = name === "";
  block.textContent = chat.blocked.has(name) ? "Unblock" : "Block";
  const list = $("messages");
  const fromBottom = list.scrollHeight - list.scrollTop;
  list.replaceChildren();
  for (const m of convo ? convo.messages : []) {
    const item = el("li", m.from === chat.me ? "message mine" : "message");
    const meta = el("div", "meta");
    meta.append(el("span", "from", m.from), el("time", "time", shortTime(m.time)));
    meta.lastChild.dateTime = m.time;
    item.append(meta, el("div", "text", m.text));
    list.append(item);
  }
  list.scrollTop = keepScroll ? list.scrollHeight - fromBottom : list.scrollHeight;
}
