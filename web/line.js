// The natter line protocol as the page needs it: pure functions from a
// line to a value, no DOM and no socket (see docs/PROTOCOL.md).

// Splits off the first `n` blank-separated words; the rest is kept whole
// (message text keeps its inner spaces).
function words(line, n) {
  const out = [];
  let rest = line;
  for (let i = 0; i < n; i++) {
    const at = rest.indexOf(" ");
    if (at < 0) {
      out.push(rest);
      rest = "";
    } else {
      out.push(rest.slice(0, at));
      rest = rest.slice(at + 1);
    }
  }
  out.push(rest);
  return out;
}

// `* msg <from> <time> <text>`, `* broadcast ...`, `* bye <reason>`,
// `* notice <text>`, `* hello ...`.
export function parseEvent(line) {
  const [, kind, rest] = words(line, 2);
  if (kind === "msg" || kind === "broadcast") {
    const [from, time, text] = words(rest, 2);
    return { kind, from, time, text };
  }
  return { kind, text: rest };
}

// A `history` row: `= <time> <from> <to> <text>`.
export function parseHistoryRow(line) {
  const [, time, from, to, text] = words(line, 4);
  return { time, from, to, text };
}

// An `inbox` row: `= <time> <from> <text>`.
export function parseInboxRow(line) {
  const [, time, from, text] = words(line, 3);
  return { time, from, text };
}

// A `wholast` row: `= <user> online` or `= <user> <last-seen>`.
export function parsePresenceRow(line) {
  const [, user, seen] = words(line, 2);
  return { user, online: seen === "online", seen };
}

// A completion: `+ ...` or `- CODE text`.
export function parseCompletion(line) {
  const ok = line.startsWith("+ ");
  const [, code, text] = words(line, 2);
  return { ok, code: ok ? "" : code, text: ok ? line.slice(2) : text, line };
}

// A message is one line: line breaks (pasted text) become spaces.
export function oneLine(text) {
  const line = text.replace(/\r\n|[\r\n\u2028\u2029]/g, " ");
  return { line, changed: line !== text };
}

// Whether a name is one the server accepts: a letter, then letters,
// digits, `_`, `-` or `.`, 32 at most. Names are compared lowercase.
export function isName(name) {
  return /^[A-Za-z][A-Za-z0-9_.-]{0,31}$/.test(name);
}
