// The admin's console: read models with their status and lag and a rebuild with live
// progress (POST .../rebuild, then GET /api/admin/jobs/{id} until done), live
// connections by node and test, and test definitions with their item statistics.
"use strict";

(function () {
  const { $, el, fill, api, when, num } = window.Assessd;
  const S = { token: null, polling: null };
  const POLL_MS = 250;

  function call(path, options) {
    return api(path, Object.assign({ token: S.token }, options || {})).catch((e) => {
      if (e.status === 401) window.Assessd.signOut("admin");
      throw e;
    });
  }

  async function refresh() {
    $("console-error").textContent = "";
    try {
      await Promise.all([projections(), connections(), tests()]);
    } catch (e) {
      $("console-error").textContent = e.message;
    }
  }

  async function projections() {
    const reply = await call("/api/admin/projections");
    fill($("projections").tBodies[0], ...reply.items.map((p) => el("tr", { "data-name": p.name },
      el("td", { text: p.name }),
      el("td", { class: "status", text: p.status.replace("_", " ") }),
      el("td", { text: String(p.events_applied) }),
      el("td", { class: "lag", text: String(p.lag) }),
      el("td", { text: p.last_rebuilt_at ? when(p.last_rebuilt_at) : "never" }),
      el("td", {}, el("button", {
        type: "button", text: "Rebuild", "data-rebuild": p.name,
        "aria-label": "Rebuild " + p.name,
        disabled: S.polling !== null,
        onclick: () => rebuild(p.name),
      })))));
  }

  async function rebuild(name) {
    const panel = $("rebuild");
    const bar = $("rebuild-progress");
    const status = $("rebuild-status");
    panel.hidden = false;
    $("rebuild-label").textContent = "Rebuild of " + name;
    bar.max = 1;
    bar.value = 0;
    status.textContent = "Starting…";
    panel.dataset.status = "starting";
    let job;
    try {
      job = await call("/api/admin/projections/" + encodeURIComponent(name) + "/rebuild", { method: "POST" });
    } catch (e) {
      status.textContent = e.message;
      panel.dataset.status = "failed";
      return;
    }
    for (const button of document.querySelectorAll("[data-rebuild]")) button.disabled = true;
    const poll = async () => {
      let j;
      try {
        j = await call("/api/admin/jobs/" + encodeURIComponent(job.job_id));
      } catch (e) {
        status.textContent = e.message;
        panel.dataset.status = "failed";
        stop();
        return;
      }
      bar.max = Math.max(1, j.events_total);
      bar.value = j.status === "done" ? bar.max : j.events_done;
      panel.dataset.status = j.status;
      if (j.status === "running") {
        // The job counts the history before it reads it: until then its total is 0.
        status.textContent = j.events_total > 0
          ? "Running: " + j.events_done + " of " + j.events_total + " events"
          : "Running: counting the events…";
        S.polling = setTimeout(poll, POLL_MS);
        return;
      }
      status.textContent = j.status === "done"
        ? "Done: " + j.events_done + " events, in " + seconds(j.started_at, j.finished_at)
        : "Failed: " + (j.error || "unknown error");
      stop();
      projections().catch(() => {});
    };
    const stop = () => {
      clearTimeout(S.polling);
      S.polling = null;
      for (const button of document.querySelectorAll("[data-rebuild]")) button.disabled = false;
    };
    S.polling = setTimeout(poll, 0);
  }

  function seconds(from, to) {
    const ms = Date.parse(to) - Date.parse(from);
    return isNaN(ms) ? "?" : (ms / 1000).toFixed(2) + " s";
  }

  async function connections() {
    const c = await call("/api/admin/connections");
    $("connections-total").textContent = c.total + (c.total === 1 ? " live connection" : " live connections");
    const rows = [];
    for (const [node, n] of Object.entries(c.by_node)) {
      rows.push(el("tr", {}, el("td", { text: "node" }), el("td", { text: node }), el("td", { text: String(n) })));
    }
    for (const [test, n] of Object.entries(c.by_test)) {
      rows.push(el("tr", {}, el("td", { text: "test in progress" }), el("td", { text: test }), el("td", { text: String(n) })));
    }
    fill($("connections").tBodies[0], ...rows);
  }

  async function tests() {
    const list = await call("/api/admin/tests");
    const blocks = await Promise.all(list.items.map(async (t) => {
      let stats = null;
      try {
        stats = await call("/api/admin/tests/" + encodeURIComponent(t.id) + "/statistics");
      } catch (e) {
        stats = { versions: [], error: e.message };
      }
      const prompts = new Map(t.questions.map((q) => [q.id, q.prompt]));
      const versions = stats.versions.length
        ? stats.versions.map((v) => el("div", { class: "table-wrap" },
          el("p", { text: "Version " + v.version + ": " + v.attempts_started + " started, " +
            v.attempts_completed + " completed, mean score " + num(v.mean_score) +
            ", pass rate " + (v.pass_rate === null ? "–" : Math.round(v.pass_rate * 100) + "%") }),
          el("table", { "data-test-id": t.id, "data-version": String(v.version) },
            el("thead", {}, el("tr", {},
              el("th", { scope: "col", text: "Question" }),
              el("th", { scope: "col", text: "Answered" }),
              el("th", { scope: "col", text: "Facility" }),
              el("th", { scope: "col", text: "Discrimination" }))),
            el("tbody", {}, ...v.questions.map((q) => el("tr", {},
              el("td", { text: q.question_id + (prompts.has(q.question_id) ? ": " + prompts.get(q.question_id) : "") }),
              el("td", { text: String(q.answered) }),
              el("td", { class: "facility", text: num(q.facility) }),
              el("td", { text: num(q.discrimination) })))))))
        : [el("p", { class: "hint", text: stats.error || "No attempts yet." })];
      return el("section", { class: "panel", "data-test-id": t.id },
        el("h3", { text: t.title + " (" + t.id + ", version " + t.version + ")" }),
        el("p", { class: "hint", text: t.questions.length + " questions, " + t.max_attempts +
          " attempts allowed, " + (t.time_limit_secs ? t.time_limit_secs + " s" : "no time limit") +
          ", pass at " + Math.round(t.pass_ratio * 100) + "%" }),
        ...versions);
    }));
    fill($("tests"), ...blocks);
  }

  $("refresh").addEventListener("click", refresh);

  document.addEventListener("DOMContentLoaded", () => {
    window.Assessd.signIn({
      page: "admin",
      role: "admin",
      accepts: ["admin"],
      onSignedIn: ({ token }) => {
        S.token = token;
        $("console").hidden = false;
        refresh();
      },
    });
  });
})();
