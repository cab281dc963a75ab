// The auditor's page: one user's stream as a readable timeline (the question as shown, the
// answer as given, the feedback as given), the hash-chain check, and the user's state after
// any event (GET /api/audit/users/{id}/events, /verify, /state?at_sequence=N).
"use strict";

(function () {
  const { $, el, fill, api, when, num } = window.Assessd;
  const S = { token: null, user: null, selected: null };
  /** Pages of 1000 events read at most for one timeline. */
  const MAX_PAGES = 100;

  function base(user) {
    return "/api/audit/users/" + encodeURIComponent(user);
  }

  async function lookup(user) {
    const status = $("lookup-status");
    status.textContent = "Loading " + user + "…";
    $("result").hidden = true;
    let events = [];
    let verification;
    try {
      let cursor = null;
      for (let page = 0; page < MAX_PAGES; page++) {
        const query = "?limit=1000" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "");
        const reply = await api(base(user) + "/events" + query, { token: S.token });
        events = events.concat(reply.items);
        cursor = reply.next_cursor;
        if (!cursor || reply.items.length === 0) break;
      }
      verification = events.length ? await api(base(user) + "/verify", { token: S.token }) : null;
    } catch (e) {
      if (e.status === 401) window.Assessd.signOut("auditor");
      status.textContent = e.message;
      return;
    }
    if (!events.length) {
      status.textContent = "No events recorded for " + user + ".";
      return;
    }
    status.textContent = "";
    S.user = user;
    $("result-title").textContent = user + ": " + events.length + " events";
    const verify = $("verify");
    if (verification.ok) {
      verify.className = "ok";
      verify.textContent = "Hash chain verified: all " + verification.events_checked +
        " events are as recorded.";
    } else {
      verify.className = "error";
      verify.textContent = "Hash chain broken at event " + verification.first_bad_sequence +
        " (" + verification.events_checked + " checked): the stored history was altered.";
    }
    fill($("timeline"), ...timeline(events));
    $("result").hidden = false;
    await showState(null);
    $("result-title").focus();
  }

  function timeline(events) {
    const questions = new Map();
    return events.map((e) => {
      const p = e.payload || {};
      const key = p.assessment_id + "/" + (p.question_id || (p.question && p.question.question_id));
      if (e.event_type === "QuestionPresented" && p.question) questions.set(key, p.question);
      const body = describe(e.event_type, p, questions.get(key));
      const stateButton = el("button", {
        type: "button", class: "secondary", "data-sequence": String(e.sequence),
        text: "State after this event",
        "aria-label": "State after event " + e.sequence,
        onclick: () => showState(e.sequence),
      });
      return el("li", { id: "event-" + e.sequence, "data-type": e.event_type },
        el("div", { class: "head" },
          el("span", { text: "#" + e.sequence }),
          el("span", { class: "type", text: e.event_type }),
          el("span", { class: "time", text: when(e.recorded_at) }),
          e.metadata && e.metadata.node_id ? el("span", { class: "time", text: "node " + e.metadata.node_id }) : null),
        el("div", { class: "body" }, ...body),
        el("details", {}, el("summary", { text: "Recorded data" }),
          el("pre", { text: JSON.stringify({ payload: e.payload, metadata: e.metadata }, null, 2) })),
        stateButton);
    });
  }

  function line(label, text) {
    return el("p", {}, el("strong", { text: label + ": " }), text);
  }

  function answerText(answer, question) {
    const choices = (question && question.choices) || [];
    const name = (id) => {
      const choice = choices.find((c) => c.id === id);
      return choice ? id + " (" + choice.text + ")" : id;
    };
    if (Array.isArray(answer)) return answer.map(name).join(", ");
    if (question && question.kind === "free_text") return "“" + answer + "”";
    return name(String(answer));
  }

  // What a regrade corrected, as the admin asked it.
  function corrected(c) {
    c = c || {};
    const fixed = [];
    if (c.answer !== undefined) fixed.push("key " + (Array.isArray(c.answer) ? c.answer.join(", ") : c.answer));
    if (c.keywords !== undefined) fixed.push("keywords " + c.keywords.join(", "));
    if (c.points !== undefined) fixed.push(num(c.points) + " points");
    return fixed.join("; ");
  }

  function describe(type, p, question) {
    switch (type) {
      case "AssessmentStarted":
        return [line("Started", (p.title || p.test_id) + " (test " + p.test_id + " v" + p.test_version +
          ", attempt " + p.attempt + ")"),
          line("Questions", p.total_questions + ", worth " + num(p.max_score) + " points; pass at " +
            Math.round(p.pass_ratio * 100) + "%"),
          line("Time limit", p.time_limit_secs ? p.time_limit_secs + " s, deadline " + when(p.deadline) : "none")];
      case "QuestionPresented": {
        const q = p.question || {};
        const out = [line("Question " + q.position + " (" + q.question_id + ", " + q.kind + ")", q.prompt)];
        if (q.choices && q.choices.length) {
          out.push(el("ul", {}, ...q.choices.map((c) => el("li", { text: c.id + ": " + c.text }))));
        }
        return out;
      }
      case "AnswerSubmitted":
        return [line("Answer to " + p.question_id, answerText(p.answer, question))];
      case "FeedbackGiven":
        return [line(p.correct ? "Correct" : "Not correct",
          num(p.score) + " of " + num(p.max_score) + " points (graded by " + p.graded_by + ")"),
          line("Feedback", p.feedback || "")];
      case "AssessmentCompleted":
        return [line("Completed", num(p.score) + " of " + num(p.max_score) + ", " +
          (p.passed ? "passed" : "not passed") + " (" + p.reason + ")")];
      case "ChatExchanged":
        return [line("Asked", p.user_text || ""), line("Tutor (" + p.tutor + ")", p.reply_text || "")];
      // An admin's changes: who, when and why, as recorded in the user's own stream.
      case "DeadlineExtended":
        return [line("Extra time", "+" + p.extra_secs + " s, deadline now " + when(p.deadline)),
          line("By", (p.actor || "") + ", " + when(p.extended_at)), line("Why", p.reason || "")];
      case "OverrideSet":
        return [line("Override of " + p.test_id,
          "attempts " + (p.max_attempts == null ? "as the test" : p.max_attempts) + ", time limit " +
          (p.time_limit_secs == null ? "as the test" : p.time_limit_secs + " s") + " (attempts started from now on)"),
          line("By", (p.actor || "") + ", " + when(p.set_at)), line("Why", p.reason || "")];
      case "OverrideCleared":
        return [line("Override of " + p.test_id + " ended", "the test's own limits apply again"),
          line("By", (p.actor || "") + ", " + when(p.cleared_at)), line("Why", p.reason || "(none given)")];
      case "AnswerRegraded":
        return [line("Regraded " + p.question_id, num(p.old_score) + " → " + num(p.new_score) + " of " +
          num(p.max_score) + " points (corrected: " + corrected(p.correction) + ")"),
          line("Attempt now", num(p.attempt_score) + " of " + num(p.attempt_max_score) + ", " +
            (p.passed ? "passed" : "not passed")),
          line("By", (p.actor || "") + ", " + when(p.regraded_at)), line("Why", p.reason || "")];
      case "QuestionCorrected":
        return [line("Corrected " + p.question_id + " before it was answered",
          "now worth " + num(p.points) + " points (corrected: " + corrected(p.correction) + ")"),
          line("Attempt now", "out of " + num(p.attempt_max_score)),
          line("By", (p.actor || "") + ", " + when(p.corrected_at)), line("Why", p.reason || "")];
      default:
        return [el("pre", { text: JSON.stringify(p, null, 2) })];
    }
  }

  async function showState(sequence) {
    const path = base(S.user) + "/state" + (sequence === null ? "" : "?at_sequence=" + sequence);
    let state;
    try {
      state = await api(path, { token: S.token });
    } catch (e) {
      $("state-note").textContent = e.message;
      return;
    }
    for (const item of document.querySelectorAll("#timeline li.selected")) item.classList.remove("selected");
    if (sequence !== null) {
      const item = $("event-" + sequence);
      if (item) item.classList.add("selected");
    }
    $("state-title").textContent = sequence === null
      ? "State now (after event " + state.sequence + ")"
      : "State after event " + state.sequence;
    $("state-note").textContent = state.assessments.length ? "" : "No attempts yet at this point.";
    fill($("state-table").tBodies[0], ...state.assessments.map((a) => el("tr", {},
      el("td", { text: (a.title || a.test_id) + " #" + a.attempt }),
      el("td", { text: a.status === "completed" ? "completed" : "in progress" }),
      el("td", { text: a.answered + " of " + a.total_questions }),
      el("td", { text: num(a.score) + " / " + num(a.max_score) }),
      el("td", { text: a.current_question_id || "–" }),
      el("td", { text: a.status === "completed" ? (a.passed ? "passed" : "not passed") + " (" + a.reason + ")" : "–" }))));
  }

  $("lookup-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const user = $("user-id").value.trim();
    if (!user) {
      $("lookup-status").textContent = "Enter a user id.";
      $("user-id").focus();
      return;
    }
    lookup(user);
  });

  document.addEventListener("DOMContentLoaded", () => {
    window.Assessd.signIn({
      page: "auditor",
      role: "auditor",
      accepts: ["auditor", "admin"],
      onSignedIn: ({ token }) => {
        S.token = token;
        $("lookup").hidden = false;
        const wanted = new URLSearchParams(location.search).get("user");
        if (wanted) {
          $("user-id").value = wanted;
          lookup(wanted);
        } else {
          $("user-id").focus();
        }
      },
    });
  });
})();
