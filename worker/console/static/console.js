// voicestack console: the live calls page (server-sent events), capacity and latency panels,
// and the call actions. Plain DOM, textContent only (never innerHTML): every string shown
// here came from a caller or an agent.
"use strict";

(function () {
  const STALE_MS = 30000; // a snapshot not refreshed for this long is a gone call
  const page = document.body.dataset.page;
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function fmtDuration(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    const m = Math.floor(s / 60);
    return m + ":" + String(s % 60).padStart(2, "0");
  }

  function fmtMs(seconds) {
    return seconds === null || seconds === undefined ? "–" : Math.round(seconds * 1000) + " ms";
  }

  async function getJSON(url) {
    const resp = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
    if (resp.status === 401) {
      window.location.href = "/login?next=" + encodeURIComponent(window.location.pathname);
      throw new Error("login required");
    }
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    return resp.json();
  }

  async function postAction(url, fields) {
    const body = new URLSearchParams(fields);
    body.set("csrf", csrf);
    const resp = await fetch(url, {
      method: "POST",
      headers: { Accept: "application/json", "X-CSRF-Token": csrf },
      body: body,
    });
    if (!resp.ok) return { ok: false, detail: "HTTP " + resp.status + ": " + (await resp.text()) };
    return resp.json();
  }

  // ---- live calls -------------------------------------------------------------------------

  const calls = new Map(); // call_id -> {data, row, cells, seen}

  function showResult(text, ok) {
    const node = document.getElementById("action-result");
    node.hidden = false;
    node.textContent = text;
    node.className = "action-result " + (ok ? "ok" : "error");
  }

  function actionCell(callId) {
    const cell = el("td", "actions");
    const end = el("button", "end", "End call");
    end.type = "button";
    end.addEventListener("click", async function () {
      if (!window.confirm("End this call now?")) return;
      end.disabled = true;
      showResult("Ending call…", true);
      const res = await postAction("/calls/" + encodeURIComponent(callId) + "/end", {});
      showResult((res.ok ? "Call ended: " : "End call failed: ") + res.detail, res.ok);
      end.disabled = false;
    });
    cell.appendChild(end);
    const options = document.getElementById("transfer-targets");
    if (options && options.content.childElementCount > 0) {
      const select = el("select", "target");
      select.appendChild(options.content.cloneNode(true));
      const go = el("button", "transfer", "Transfer");
      go.type = "button";
      go.addEventListener("click", async function () {
        const target = select.value;
        if (!window.confirm("Transfer this call to " + target + "?")) return;
        go.disabled = true;
        showResult("Transferring to " + target + "…", true);
        const res = await postAction("/calls/" + encodeURIComponent(callId) + "/transfer", {
          target: target,
        });
        showResult((res.ok ? "Transferred: " : "Transfer failed: ") + res.detail, res.ok);
        go.disabled = false;
      });
      cell.appendChild(select);
      cell.appendChild(go);
    }
    return cell;
  }

  function upsert(callId, fields) {
    let entry = calls.get(callId);
    if (!entry) {
      const row = el("tr");
      row.dataset.callId = callId;
      const cells = {};
      for (const name of ["caller", "flow", "duration", "state", "interim", "agent"]) {
        cells[name] = el("td", name);
        row.appendChild(cells[name]);
      }
      row.appendChild(actionCell(callId));
      document.querySelector("#live-calls tbody").appendChild(row);
      entry = { data: { call_id: callId }, row: row, cells: cells };
      calls.set(callId, entry);
    }
    Object.assign(entry.data, fields);
    entry.seen = Date.now();
    const d = entry.data;
    entry.cells.caller.textContent = d.caller || "unknown";
    entry.cells.flow.textContent = d.flow || "";
    entry.cells.state.textContent = d.state || "";
    entry.cells.state.className = "state state-" + (d.state || "none");
    entry.cells.interim.textContent = d.interim_text || "";
    entry.cells.agent.textContent = d.agent_text || "";
    tick();
    return entry;
  }

  function remove(callId, outcome) {
    const entry = calls.get(callId);
    if (!entry) return;
    entry.row.remove();
    calls.delete(callId);
    const item = el("li");
    const link = el("a", null, entry.data.caller || callId);
    link.href = "/calls/" + encodeURIComponent(callId);
    item.appendChild(link);
    item.appendChild(el("span", "muted", " " + (outcome || "ended")));
    const recent = document.getElementById("recent");
    recent.insertBefore(item, recent.firstChild);
    while (recent.childElementCount > 10) recent.lastChild.remove();
    tick();
  }

  function fromSnapshot(snap) {
    // A snapshot holds call_started's and state's fields, and the last "interim" and
    // "agent_partial" texts under those names.
    const fields = {
      caller: snap.caller,
      flow: snap.flow,
      started_at: snap.started_at,
      state: snap.state,
    };
    if (snap.interim !== undefined) fields.interim_text = snap.interim;
    if (snap.agent_partial !== undefined) fields.agent_text = snap.agent_partial;
    return fields;
  }

  function onEvent(ev) {
    const id = ev.call_id;
    if (!id) return;
    switch (ev.type) {
      case "call_started":
        upsert(id, {
          caller: ev.caller, flow: ev.flow, started_at: ev.started_at, direction: ev.direction,
        });
        break;
      case "state":
        upsert(id, { state: ev.state });
        break;
      case "interim":
        upsert(id, { interim_text: ev.text });
        break;
      case "caller_turn":
        upsert(id, { interim_text: ev.text });
        break;
      case "agent_partial":
        upsert(id, { agent_text: ev.text });
        break;
      case "agent_turn":
        upsert(id, { agent_text: ev.text });
        break;
      case "call_ended":
        remove(id, ev.outcome);
        break;
      default:
        if (calls.has(id)) calls.get(id).seen = Date.now();
    }
  }

  function tick() {
    const now = Date.now();
    for (const entry of calls.values()) {
      const started = Date.parse(entry.data.started_at || "");
      entry.cells.duration.textContent = isNaN(started) ? "" : fmtDuration(now - started);
    }
    document.getElementById("live-count").textContent = String(calls.size);
    document.getElementById("no-calls").hidden = calls.size > 0;
  }

  function applySnapshot(list) {
    const live = new Set();
    for (const snap of list) {
      live.add(snap.call_id);
      upsert(snap.call_id, fromSnapshot(snap));
    }
    // Calls the agents no longer refresh are gone, even if their call_ended was missed.
    for (const [id, entry] of calls) {
      if (!live.has(id) && Date.now() - entry.seen > STALE_MS) remove(id, "gone");
    }
  }

  function startLive() {
    const status = document.getElementById("feed-status");
    const source = new EventSource("/events");
    source.addEventListener("snapshot", function (msg) {
      const data = JSON.parse(msg.data);
      status.textContent = data.error ? data.error : "live";
      applySnapshot(data.calls || []);
    });
    source.onmessage = function (msg) {
      onEvent(JSON.parse(msg.data));
    };
    source.onopen = function () {
      status.textContent = "live";
      status.className = "feed ok";
    };
    source.onerror = function () {
      status.textContent = "reconnecting…";
      status.className = "feed error";
    };
    setInterval(tick, 1000);
    setInterval(function () {
      getJSON("/api/live").then(function (data) {
        if (!data.error) applySnapshot(data.calls || []);
      }).catch(function () {});
    }, 10000);
    pollCapacity();
    pollStats();
    setInterval(pollCapacity, 3000);
    setInterval(pollStats, 5000);
  }

  async function pollCapacity() {
    const node = document.getElementById("capacity");
    try {
      const data = await getJSON("/api/capacity");
      node.textContent = "";
      if (!data.ok) {
        node.appendChild(el("span", "error", data.error || "unreachable"));
        return;
      }
      const cap = data.capacity || {};
      const parts = [];
      for (const key of Object.keys(cap)) {
        const value = cap[key];
        if (typeof value === "object" && value !== null) continue;
        parts.push(key + ": " + (typeof value === "number" ? +value.toFixed(3) : value));
      }
      node.textContent = parts.join(" · ") || "ok";
    } catch (err) {
      node.textContent = "unreachable";
    }
  }

  async function pollStats() {
    try {
      const data = await getJSON("/api/stats");
      document.getElementById("latency-turns").textContent = "(last " + data.turns + " replies)";
      for (const row of document.querySelectorAll("#latency tbody tr")) {
        const stage = data.stages[row.dataset.stage] || {};
        row.querySelector(".p50").textContent = fmtMs(stage.p50);
        row.querySelector(".p95").textContent = fmtMs(stage.p95);
      }
    } catch (err) {
      /* the panel keeps its last values */
    }
  }

  if (page === "live") startLive();
})();
