// The ci web page: sign in with an API key (kept in sessionStorage, sent as a Bearer header),
// the jobs, a job's live log by byte offset, the admin lists. Everything from the server is
// hostile text: the DOM is built with createElement/textContent only.
"use strict";

(function () {
  const TERMINAL = ["passed", "failed", "error", "timed_out", "cancelled", "lost"];
  const STATUSES = ["queued", "running"].concat(TERMINAL);
  const KEY = "ciKey";

  // ---- pure helpers (exposed as window.ciWeb, tested in a browser) ----

  // ANSI SGR to segments. `style` is {fg, bg, bold}; returns the segments, the style after the
  // text, and an unfinished escape sequence at the end (`rest`) to prepend to the next chunk.
  // Other escape sequences (CSI not ending in m, OSC, two-byte) are dropped.
  function ansi(text, style) {
    let st = Object.assign({ fg: null, bg: null, bold: false }, style || {});
    const segs = [];
    let buf = "";
    let i = 0;
    const flush = () => {
      if (buf) segs.push({ text: buf, classes: classesOf(st) });
      buf = "";
    };
    while (i < text.length) {
      const c = text[i];
      if (c !== "\x1b") { buf += c; i++; continue; }
      if (i + 1 >= text.length) return done(text.slice(i));
      const n = text[i + 1];
      if (n === "[") {
        let j = i + 2;
        while (j < text.length && !(text.charCodeAt(j) >= 0x40 && text.charCodeAt(j) <= 0x7e)) j++;
        if (j >= text.length) return done(text.slice(i));
        if (text[j] === "m") { flush(); st = sgr(st, text.slice(i + 2, j)); }
        i = j + 1;
      } else if (n === "]" || n === "P" || n === "_" || n === "^") {
        // OSC/DCS/APC/PM: up to BEL or ST (ESC \).
        let j = i + 2;
        for (;;) {
          if (j >= text.length) return done(text.slice(i));
          if (text[j] === "\x07") { j += 1; break; }
          if (text[j] === "\x1b" && j + 1 < text.length && text[j + 1] === "\\") { j += 2; break; }
          if (text[j] === "\x1b" && j + 1 >= text.length) return done(text.slice(i));
          j++;
        }
        i = j;
      } else {
        i += 2;
      }
    }
    return done("");
    function done(rest) {
      flush();
      return { segs: segs, style: st, rest: rest };
    }
  }

  function sgr(st, params) {
    const ps = params === "" ? [0] : params.split(";").map((p) => parseInt(p, 10) || 0);
    st = Object.assign({}, st);
    for (let k = 0; k < ps.length; k++) {
      const p = ps[k];
      if (p === 0) st = { fg: null, bg: null, bold: false };
      else if (p === 1) st.bold = true;
      else if (p === 22) st.bold = false;
      else if ((p >= 30 && p <= 37) || (p >= 90 && p <= 97)) st.fg = p;
      else if (p === 39) st.fg = null;
      else if (p >= 40 && p <= 47) st.bg = p;
      else if (p === 49) st.bg = null;
      else if (p === 38 || p === 48) k += ps[k + 1] === 5 ? 2 : ps[k + 1] === 2 ? 4 : 1;
    }
    return st;
  }

  function classesOf(st) {
    const c = [];
    if (st.bold) c.push("b");
    if (st.fg) c.push("f" + st.fg);
    if (st.bg) c.push("g" + st.bg);
    return c;
  }

  // Bytes in, text out, counting bytes: the offset to resume from is what was received, and a
  // character split between two chunks (or two connections) is decoded whole.
  function logReader() {
    const decoder = new TextDecoder("utf-8");
    return {
      offset: 0,
      push(bytes) {
        this.offset += bytes.byteLength;
        return decoder.decode(bytes, { stream: true });
      },
    };
  }

  function backoff(attempt) {
    return Math.min(5000, 250 * Math.pow(2, attempt));
  }

  function fmtDuration(secs) {
    if (secs === null || secs === undefined) return "";
    if (secs < 10) return secs.toFixed(1) + "s";
    const s = Math.round(secs);
    if (s < 60) return s + "s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + "m " + String(s % 60).padStart(2, "0") + "s";
    return Math.floor(m / 60) + "h " + String(m % 60).padStart(2, "0") + "m";
  }

  function fmtAge(iso, now) {
    const secs = Math.max(0, ((now === undefined ? Date.now() : now) - Date.parse(iso)) / 1000);
    if (secs < 60) return Math.floor(secs) + "s ago";
    if (secs < 3600) return Math.floor(secs / 60) + "m ago";
    if (secs < 86400) return Math.floor(secs / 3600) + "h ago";
    return Math.floor(secs / 86400) + "d ago";
  }

  function fmtCounts(t) {
    if (!t) return "";
    const parts = [t.passed + " passed"];
    if (t.failed) parts.push(t.failed + " failed");
    if (t.errors) parts.push(t.errors + " errors");
    if (t.skipped) parts.push(t.skipped + " skipped");
    if (t.xfailed) parts.push(t.xfailed + " xfailed");
    if (t.xpassed) parts.push(t.xpassed + " xpassed");
    return parts.join(", ");
  }

  // ---- DOM and HTTP ----

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") e.textContent = v;
      else if (k === "class") e.className = v;
      else if (k === "hidden") e.hidden = true;
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  const main = () => document.getElementById("main");
  let view = { closed: true, timers: [], abort: null };
  let me = null;

  class SignedOut extends Error {}

  async function api(path, opts) {
    const key = sessionStorage.getItem(KEY);
    if (!key) throw new SignedOut("");
    const init = Object.assign({ cache: "no-store", credentials: "omit" }, opts || {});
    init.headers = { Authorization: "Bearer " + key };
    const res = await fetch(path, init);
    if (res.status === 401) {
      const msg = await errorOf(res);
      signOut(msg);
      throw new SignedOut(msg);
    }
    return res;
  }

  async function errorOf(res) {
    try {
      return (await res.json()).error || res.statusText;
    } catch (e) {
      return res.status + " " + res.statusText;
    }
  }

  async function json(path, opts) {
    const res = await api(path, opts);
    if (!res.ok) throw new Error(await errorOf(res));
    return res.json();
  }

  function signOut(msg) {
    sessionStorage.removeItem(KEY);
    me = null;
    closeView();
    showSignIn(msg || "");
  }

  function closeView() {
    view.closed = true;
    view.timers.forEach(clearInterval);
    if (view.abort) view.abort.abort();
    view = { closed: false, timers: [], abort: new AbortController() };
  }

  function showSignIn(msg) {
    document.getElementById("nav").hidden = true;
    const form = document.getElementById("signin-tpl").content.cloneNode(true);
    main().replaceChildren(form);
    document.getElementById("signin-error").textContent = msg;
    document.getElementById("signin").addEventListener("submit", (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(KEY, document.getElementById("key").value.trim());
      route();
    });
  }

  function navigate(path) {
    history.pushState(null, "", path);
    route();
  }

  let shownPath = null;

  async function route() {
    shownPath = location.pathname + location.search;
    closeView();
    const v = view;
    if (!sessionStorage.getItem(KEY)) return showSignIn("");
    try {
      if (!me) me = await json("/v1/whoami");
      if (v.closed) return;
      document.getElementById("nav").hidden = false;
      document.getElementById("who").textContent = me.name + " <" + me.email + ">";
      document.querySelectorAll("#nav .admin").forEach((a) => (a.hidden = me.role !== "admin"));
      const path = location.pathname;
      const m = path.match(/^\/jobs\/([^/]+)$/);
      if (m) await jobPage(v, decodeURIComponent(m[1]));
      else if (path === "/admin/users") await usersPage(v);
      else if (path === "/admin/keys") await keysPage(v);
      else await jobsPage(v);
    } catch (e) {
      if (!(e instanceof SignedOut) && !v.closed) main().replaceChildren(el("p", { class: "error", text: e.message }));
    }
  }

  // ---- jobs list ----

  async function jobsPage(v) {
    const filter = el("select", { id: "status-filter" }, el("option", { value: "", text: "all statuses" }));
    for (const s of STATUSES) filter.append(el("option", { value: s, text: s }));
    filter.value = new URLSearchParams(location.search).get("status") || "";
    const body = el("tbody");
    const head = el("tr");
    for (const h of ["job", "status", "tests", "duration", "age", "project", "python"]) head.append(el("th", { text: h }));
    main().replaceChildren(
      el("div", { class: "toolbar" }, el("h1", { text: "Jobs" }), filter),
      el("table", { id: "jobs" }, el("thead", {}, head), body),
    );
    const load = async () => {
      const q = filter.value ? "&status=" + encodeURIComponent(filter.value) : "";
      const jobs = await json("/v1/jobs?limit=100" + q);
      if (v.closed) return;
      body.replaceChildren(...jobs.map(jobRow));
      if (!jobs.length) body.append(el("tr", {}, el("td", { colspan: "7", text: "No jobs." })));
    };
    filter.addEventListener("change", () => {
      history.replaceState(null, "", filter.value ? "/?status=" + encodeURIComponent(filter.value) : "/");
      load().catch(() => {});
    });
    await load();
    v.timers.push(setInterval(() => load().catch(() => {}), 3000));
  }

  function jobRow(j) {
    return el(
      "tr",
      { "data-id": j.id },
      el("td", { class: "mono" }, el("a", { href: "/jobs/" + encodeURIComponent(j.id), "data-nav": "", text: j.id })),
      el("td", { class: "status s-" + j.status, text: j.status + (j.phase ? " (" + j.phase + ")" : "") }),
      el("td", { text: fmtCounts(j.tests) }),
      el("td", { text: fmtDuration(j.duration_secs) }),
      el("td", { text: fmtAge(j.created), title: j.created }),
      el("td", { text: j.project || "" }),
      el("td", { text: j.python || "" }),
    );
  }

  // ---- a job ----

  async function jobPage(v, id) {
    const facts = el("dl", { class: "facts", id: "facts" });
    const status = el("span", { id: "job-status", class: "status" });
    const cancel = el("button", { type: "button", id: "cancel", class: "danger", hidden: true, text: "Cancel" });
    const result = el("p", { id: "result", hidden: true });
    const failed = el("div", { id: "failed", hidden: true });
    const log = el("div", { id: "log", tabindex: "0" });
    main().replaceChildren(
      el("div", { class: "toolbar" }, el("h1", { class: "mono", text: "Job " + id }), status, cancel),
      el("div", { class: "card" }, facts),
      result,
      failed,
      log,
    );
    let job = await json("/v1/jobs/" + encodeURIComponent(id));
    const show = (j) => {
      job = j;
      status.textContent = j.status + (j.phase ? " (" + j.phase + ")" : "");
      status.className = "status s-" + j.status;
      cancel.hidden = TERMINAL.includes(j.status);
      const rows = [
        ["project", j.project || ""],
        ["python", j.python || ""],
        ["created", j.created + " (" + fmtAge(j.created) + ")"],
        ["duration", fmtDuration(j.duration_secs)],
        ["tests", fmtCounts(j.tests)],
      ];
      if (j.queue_position) rows.push(["queue position", String(j.queue_position)]);
      facts.replaceChildren(...rows.flatMap(([k, val]) => [el("dt", { text: k }), el("dd", { text: val })]));
    };
    show(job);
    cancel.addEventListener("click", async () => {
      cancel.disabled = true;
      try {
        const res = await api("/v1/jobs/" + encodeURIComponent(id) + "/cancel", { method: "POST" });
        if (!res.ok) throw new Error(await errorOf(res));
        show(await json("/v1/jobs/" + encodeURIComponent(id)));
      } catch (e) {
        if (!(e instanceof SignedOut)) {
          result.hidden = false;
          result.textContent = "cancel failed: " + e.message;
        }
      }
      cancel.disabled = false;
    });
    const refresh = async () => {
      const j = await json("/v1/jobs/" + encodeURIComponent(id));
      if (!v.closed) show(j);
      return j;
    };
    v.timers.push(setInterval(() => { if (!TERMINAL.includes(job.status)) refresh().catch(() => {}); }, 1000));
    const lines = logView(log);
    if (job.expired) lines.note("The log was removed after the server's retention period.");
    else await followLog(v, id, lines, refresh);
    if (v.closed) return;
    while (!TERMINAL.includes(job.status) && !v.closed) {
      await sleep(500);
      await refresh();
    }
    if (v.closed) return;
    showResult(job, result);
    await showFailed(id, failed);
  }

  function showResult(j, result) {
    let text = "Result: " + j.status;
    if (j.reason) text += ": " + j.reason;
    if (j.tests) text += " — " + fmtCounts(j.tests);
    if (j.duration_secs !== null && j.duration_secs !== undefined) text += " (" + fmtDuration(j.duration_secs) + ")";
    result.textContent = text;
    result.className = "card status s-" + j.status;
    result.hidden = false;
  }

  async function showFailed(id, box) {
    const res = await api("/v1/jobs/" + encodeURIComponent(id) + "/report");
    if (!res.ok) return;
    const report = await res.json();
    if (!report.failed.length) return;
    const list = el("ul");
    for (const f of report.failed) {
      const where = f.file ? " (" + f.file + (f.line ? ":" + f.line : "") + ")" : "";
      list.append(el("li", {}, el("code", { text: f.node_id }), el("span", { text: " " + f.kind + where + ": " + f.message })));
    }
    if (report.unlisted) list.append(el("li", { text: "… and " + report.unlisted + " more" }));
    box.replaceChildren(el("h2", { text: "Failed tests" }), list);
    box.className = "card";
    box.hidden = false;
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  // Follows the log from byte 0: on an early end or a network error while the job is not over,
  // reconnects from the bytes received so far, so nothing is lost or shown twice.
  async function followLog(v, id, lines, refresh) {
    const reader = logReader();
    let attempt = 0;
    while (!v.closed) {
      try {
        const res = await api("/v1/jobs/" + encodeURIComponent(id) + "/log?offset=" + reader.offset, { signal: v.abort.signal });
        if (res.status === 410) return lines.note("The log was removed after the server's retention period.");
        if (!res.ok) throw new Error(await errorOf(res));
        const body = res.body.getReader();
        for (;;) {
          const { done, value } = await body.read();
          if (done) break;
          lines.append(reader.push(value));
          attempt = 0;
        }
      } catch (e) {
        if (e instanceof SignedOut || v.closed) return;
      }
      try {
        const j = await refresh();
        if (TERMINAL.includes(j.status) && reader.offset >= j.log_bytes) return;
      } catch (e) {
        if (e instanceof SignedOut) return;
      }
      await sleep(backoff(attempt++));
    }
  }

  // The log's lines as DOM, with a link to each and auto-scroll that stops while the reader
  // looks further up and resumes once they are back at the bottom.
  function logView(box) {
    let style = {};
    let rest = "";
    let line = null;
    let count = 0;
    let stick = true;
    box.addEventListener("scroll", () => {
      stick = box.scrollTop + box.clientHeight >= box.scrollHeight - 8;
    });
    const newLine = () => {
      count++;
      const a = el("a", { class: "ln", href: "#L" + count, text: String(count) });
      line = { div: el("div", { class: "line", id: "L" + count }, a), text: el("span", { class: "lt" }) };
      line.div.append(line.text);
      box.append(line.div);
    };
    return {
      append(text) {
        if (!text) return;
        const r = ansi(rest + text, style);
        style = r.style;
        rest = r.rest;
        for (const seg of r.segs) {
          const parts = seg.text.split("\n");
          parts.forEach((part, k) => {
            if (k > 0) {
              if (!line) newLine();
              line.div.classList.add("done");
              line = null;
            }
            if (!part) return;
            if (!line) newLine();
            line.text.append(seg.classes.length ? el("span", { class: seg.classes.join(" "), text: part }) : part);
          });
        }
        highlight(false);
        if (stick) box.scrollTop = box.scrollHeight;
      },
      note(text) {
        box.append(el("div", { class: "line note", text: text }));
      },
    };
  }

  let highlighted = null;
  function highlight(force) {
    const m = location.hash.match(/^#L(\d+)$/);
    if (!m || (highlighted === m[1] && !force)) return;
    const target = document.getElementById("L" + m[1]);
    if (!target || !target.classList.contains("done")) return;
    document.querySelectorAll("#log .hl").forEach((e) => e.classList.remove("hl"));
    target.classList.add("hl");
    target.scrollIntoView({ block: "center" });
    highlighted = m[1];
  }

  // ---- admin ----

  function table(id, headers, rows) {
    const head = el("tr");
    for (const h of headers) head.append(el("th", { text: h }));
    return el("table", { id: id }, el("thead", {}, head), el("tbody", {}, ...rows));
  }

  async function usersPage(v) {
    const users = await json("/v1/admin/users");
    if (v.closed) return;
    const rows = users.map((u) =>
      el("tr", {}, el("td", { text: u.name }), el("td", { text: u.email }), el("td", { text: u.role }),
        el("td", { text: u.active ? "active" : "disabled" }), el("td", { text: fmtAge(u.created), title: u.created })));
    main().replaceChildren(el("h1", { text: "Users" }), table("users", ["name", "email", "role", "state", "created"], rows));
  }

  async function keysPage(v) {
    const keys = await json("/v1/admin/keys");
    if (v.closed) return;
    const rows = keys.map((k) => {
      const revoke = el("button", { type: "button", class: "danger", text: "Revoke", hidden: k.revoked });
      revoke.addEventListener("click", async () => {
        if (!confirm("Revoke key " + k.name + " of " + k.user_email + "?")) return;
        const res = await api("/v1/admin/keys/" + encodeURIComponent(k.id), { method: "DELETE" });
        if (res.ok) route();
      });
      return el("tr", { "data-id": k.id }, el("td", { class: "mono", text: k.id }), el("td", { text: k.name }),
        el("td", { text: k.user_email }), el("td", { text: fmtAge(k.created), title: k.created }),
        el("td", { text: k.last_used ? fmtAge(k.last_used) : "never" }),
        el("td", { text: k.revoked ? "revoked" : "" }, revoke));
    });
    main().replaceChildren(el("h1", { text: "Keys" }),
      table("keys", ["id", "name", "user", "created", "last used", "state"], rows));
  }

  // ---- start ----

  function logText() {
    return Array.from(document.querySelectorAll("#log .line:not(.note)"))
      .map((l) => l.querySelector(".lt").textContent + (l.classList.contains("done") ? "\n" : ""))
      .join("");
  }

  window.ciWeb = { ansi, logReader, backoff, fmtDuration, fmtAge, fmtCounts, logText, followLog, logView };

  document.addEventListener("click", (ev) => {
    const a = ev.target.closest("a[data-nav]");
    if (!a || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;
    ev.preventDefault();
    navigate(a.getAttribute("href"));
  });
  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("signout").addEventListener("click", () => signOut(""));
    // A line link is a fragment navigation, which fires popstate too: only a new path routes.
    window.addEventListener("popstate", () => {
      if (location.pathname + location.search !== shownPath) route();
    });
    window.addEventListener("hashchange", () => highlight(true));
    route();
  });
})();
