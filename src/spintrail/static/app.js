// spintrail: the little JavaScript the pages use. Everything works without it except the live updates.
"use strict";

(function live() {
  const root = document.getElementById("live-root");
  if (!root || !window.EventSource) return;
  const body = root.querySelector("tbody");
  const status = document.getElementById("live-status");
  const pause = document.getElementById("live-pause");
  const MAX_ROWS = 300;
  let source = null;
  let paused = false;
  let held = [];

  function setStatus(text, kind) {
    status.textContent = text;
    status.className = "badge " + kind;
  }

  function insert(html) {
    const tmp = document.createElement("tbody");
    tmp.innerHTML = html; // rows rendered and escaped by the server's templates
    const rows = Array.from(tmp.children);
    for (let i = rows.length - 1; i >= 0; i--) body.insertBefore(rows[i], body.firstChild);
    while (body.children.length > MAX_ROWS) body.removeChild(body.lastChild);
    const empty = document.getElementById("live-empty");
    if (empty) empty.remove();
  }

  function connect() {
    source = new EventSource(root.dataset.stream);
    source.addEventListener("open", () => setStatus("live", "ok"));
    source.addEventListener("rows", (e) => {
      if (paused) held.push(e.data);
      else insert(e.data);
    });
    // The server ends each stream after a while; EventSource reconnects with Last-Event-ID by itself.
    source.addEventListener("error", () => setStatus("reconnecting…", "warn"));
  }

  pause.hidden = false;
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    if (paused) setStatus("paused", "muted");
    else {
      held.forEach(insert);
      held = [];
      setStatus("live", "ok");
    }
  });
  window.addEventListener("pagehide", () => source && source.close());
  connect();
})();
