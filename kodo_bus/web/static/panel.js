// kodo-bus web panel: places the server's already-sanitized fragments; never builds HTML
// from a flow's data itself. No inline script anywhere (the CSP forbids it).
"use strict";
(function () {
  const TERMINAL = ["finished", "error", "cancelled", "timeout", "lost"];
  const panel = (window.kodoPanel = { events: 0, ended: false, kinds: [] });

  function badge(status) {
    const span = document.createElement("span");
    span.className = "badge s-" + status.replace(/[^a-z]/g, "");
    span.textContent = status;
    return span;
  }

  // Forms marked "inplace" post in the background and swap in the server's answer.
  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (!(form instanceof HTMLFormElement) || !form.classList.contains("inplace")) return;
    ev.preventDefault();
    const button = form.querySelector("button[type=submit]");
    if (button) button.disabled = true;
    try {
      const resp = await fetch(form.action, {
        method: "POST",
        body: new URLSearchParams(new FormData(form)),
        headers: { "X-Panel-Fetch": "1" },
        credentials: "same-origin",
      });
      const holder = document.createElement("div");
      holder.innerHTML = await resp.text();
      form.replaceWith(...holder.childNodes);
    } catch (err) {
      if (button) button.disabled = false;
      const p = document.createElement("p");
      p.className = "error-box";
      p.textContent = "could not send: " + err;
      form.append(p);
    }
  });

  const section = document.querySelector("section[data-events]");
  if (!section) return;
  const $ = (sel) => section.querySelector(sel);
  const conn = $("#conn");

  function place(msg) {
    panel.events += 1;
    panel.kinds.push(msg.kind);
    switch (msg.target) {
      case "status": {
        const holder = $("#status");
        holder.replaceChildren(badge(msg.status));
        section.dataset.status = msg.status;
        if (TERMINAL.includes(msg.status)) {
          const cancel = section.querySelector("form.cancel");
          if (cancel) cancel.remove();
          const q = $("#question");
          q.querySelectorAll("form.question").forEach((f) => f.remove());
        }
        break;
      }
      case "out":
        $("#out").insertAdjacentHTML("beforeend", msg.html);
        break;
      case "files": {
        $("#files-box").hidden = false;
        const list = $("#files");
        list.insertAdjacentHTML("beforeend", msg.html);
        const added = list.lastElementChild;
        list.querySelectorAll("li.file").forEach((li) => {
          if (li !== added && li.dataset.name === added.dataset.name) li.remove();
        });
        break;
      }
      case "inputs":
        $("#inputs").innerHTML = msg.html;
        break;
      case "progress": {
        const box = $("#progress");
        box.hidden = false;
        const bar = box.querySelector("progress");
        if (msg.total) {
          bar.max = msg.total;
          bar.value = msg.done;
        } else {
          bar.removeAttribute("value");
        }
        box.querySelector(".pmsg").innerHTML = msg.html;
        break;
      }
      case "console": {
        const lines = $("#console .lines");
        lines.insertAdjacentHTML("beforeend", msg.html);
        $("#console .count").textContent = String(lines.children.length);
        break;
      }
      case "question":
        $("#question").innerHTML = msg.html;
        break;
      case "answered": {
        $("#question").querySelectorAll("form.question, p.sent").forEach((f) => f.remove());
        $("#out").insertAdjacentHTML("beforeend", msg.html);
        break;
      }
      case "error":
        $("#error").insertAdjacentHTML("beforeend", msg.html);
        break;
      case "final":
        $("#final-box").hidden = false;
        $("#final").innerHTML = msg.html;
        break;
      case "children":
        if (msg.html) {
          $("#children-box").hidden = false;
          $("#children").innerHTML = msg.html;
        }
        break;
    }
  }

  const source = new EventSource(section.dataset.events);
  source.onopen = () => (conn.textContent = "live");
  source.onmessage = (ev) => place(JSON.parse(ev.data));
  source.addEventListener("end", (ev) => {
    const msg = JSON.parse(ev.data);
    source.close();
    panel.ended = true;
    if (msg.target === "failure") {
      conn.innerHTML = msg.html;
      conn.classList.add("error-box");
    } else {
      conn.textContent = "ended";
    }
  });
  source.onerror = () => {
    if (!panel.ended) conn.textContent = "reconnecting…";
  };
})();
