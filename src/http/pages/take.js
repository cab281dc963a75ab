// The test-taker's page: the tests and past results over HTTP, the test itself over the
// WebSocket (docs/protocol.md, section 3).
//
// Never lose an answer: an answer is written to sessionStorage before it is sent and
// forgotten only when its ANSWER_FEEDBACK (or a final ERROR) arrives, so it survives a
// dropped socket and a reload, and is sent again once connected; the server treats a
// re-sent answer as the same answer. A dropped socket is reopened with exponential backoff
// and full jitter, except after close 4001 (another window took over): two windows must
// not evict each other forever, so this one waits for "Continue here".
"use strict";

(function () {
  const { $, el, fill, api, when, num } = window.Assessd;

  const PENDING = "assessd.pending";
  const BASE_MS = 250;
  const CAP_MS = 10000;
  const HEARTBEAT_MS = 20000;
  /** ERROR codes after which a re-sent answer can never be recorded. */
  const FINAL = ["wrong_question", "time_expired", "assessment_completed", "conflict",
    "not_found", "no_active_assessment", "bad_request"];

  const S = {
    token: null,
    user: null,
    ws: null,
    connected: false,
    attempts: 0,
    retryTimer: null,
    heartbeat: null,
    replaced: false,
    clockOffset: 0,
    wantStart: null,
    assessment: null,
    question: null,
    showingFeedback: false,
    buffered: null,
    timer: null,
    streaming: null,
  };

  // --- connection -------------------------------------------------------------------

  function setConn(state, text) {
    const conn = $("conn");
    conn.dataset.state = state;
    conn.textContent = text;
  }

  function connect() {
    clearTimeout(S.retryTimer);
    if (S.ws) {
      S.ws.onclose = null;
      try { S.ws.close(); } catch (e) { /* already closed */ }
      S.ws = null;
    }
    if (window.Assessd.expired(S.token)) {
      window.Assessd.signOut("taker");
      return;
    }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(scheme + "//" + location.host + "/ws?access_token=" +
      encodeURIComponent(S.token));
    S.ws = ws;
    if (S.attempts === 0) setConn("connecting", "Connecting…");
    ws.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      handle(message);
    };
    ws.onclose = (event) => {
      if (S.ws !== ws) return;
      S.ws = null;
      closed(event.code);
    };
  }

  function closed(code) {
    S.connected = false;
    clearInterval(S.heartbeat);
    document.body.dataset.socket = "closed";
    if (code === 4001 || S.replaced) {
      // Another window of this user took over. Reconnecting by ourselves would evict it,
      // and it would evict us back: wait for the person to choose.
      S.replaced = true;
      document.body.dataset.socket = "replaced";
      setConn("replaced", "This test is open in another window.");
      $("replaced").hidden = false;
      // Nothing can be sent from here until the person chooses to continue here (the
      // resume that follows re-enables the question).
      lock(true);
      $("continue-here").focus();
      return;
    }
    S.attempts += 1;
    const ceiling = Math.min(CAP_MS, BASE_MS * Math.pow(2, Math.min(S.attempts, 16)));
    const delay = Math.random() * ceiling;
    setConn("reconnecting", "Connection lost. Reconnecting… (attempt " + S.attempts + ")" +
      (pending() ? " Your answer is kept and will be sent when the connection is back." : ""));
    S.retryTimer = setTimeout(connect, delay);
    // A token the server no longer accepts fails every upgrade alike: ask once in a while.
    if (S.attempts % 5 === 0) {
      api("/api/tests", { token: S.token }).catch((e) => {
        if (e.status === 401) window.Assessd.signOut("taker");
      });
    }
  }

  function send(message) {
    if (S.ws && S.connected && S.ws.readyState === WebSocket.OPEN) {
      S.ws.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  // Reconnect at once when the browser says the network is back.
  window.addEventListener("online", () => {
    if (!S.connected && !S.replaced && S.token) {
      S.attempts = Math.max(S.attempts, 1);
      connect();
    }
  });

  // --- the pending answer -------------------------------------------------------------

  function pending() {
    try {
      return JSON.parse(sessionStorage.getItem(PENDING) || "null");
    } catch (e) {
      return null;
    }
  }

  function setPending(answer) {
    if (answer) sessionStorage.setItem(PENDING, JSON.stringify(answer));
    else sessionStorage.removeItem(PENDING);
  }

  function sendPending() {
    const answer = pending();
    if (!answer) return;
    if (send(Object.assign({ type: "SUBMIT_ANSWER" }, answer))) {
      $("answer-status").textContent = "Sending your answer…";
    } else {
      $("answer-status").textContent =
        "You are offline. Your answer is kept and will be sent when the connection is back.";
    }
  }

  // --- messages -----------------------------------------------------------------------

  function handle(m) {
    switch (m.type) {
      case "CONNECTED":
        S.connected = true;
        S.attempts = 0;
        S.replaced = false;
        $("replaced").hidden = true;
        document.body.dataset.socket = "connected";
        S.clockOffset = Date.parse(m.server_time) - Date.now() || 0;
        setConn("connected", "Connected.");
        clearInterval(S.heartbeat);
        S.heartbeat = setInterval(() => send({ type: "HEARTBEAT" }), HEARTBEAT_MS);
        sendPending();
        if (S.assessment && !pending()) {
          // Where does the attempt on screen stand now? (It may have ended meanwhile.)
          send({ type: "GET_QUESTION", assessment_id: S.assessment.assessment_id });
        }
        if (S.wantStart) {
          send({ type: "START_ASSESSMENT", test_id: S.wantStart, request_id: "start" });
          S.wantStart = null;
        }
        break;
      case "ASSESSMENT_STARTED":
      case "ASSESSMENT_RESUMED":
        begin(m);
        break;
      case "QUESTION":
        if (S.showingFeedback) {
          S.buffered = m;
          $("next").textContent = "Next question";
        } else {
          showQuestion(m);
        }
        break;
      case "ANSWER_FEEDBACK":
        feedback(m);
        break;
      case "PROGRESS_UPDATE":
        if (S.assessment && S.assessment.assessment_id === m.assessment_id) {
          S.assessment.answered = m.answered;
          S.assessment.score = m.score;
          S.assessment.max_score = m.max_score;
          progress();
        }
        break;
      case "ASSESSMENT_COMPLETED": {
        const answer = pending();
        if (answer && answer.assessment_id === m.assessment_id) {
          setPending(null);
          $("answer-status").textContent = "";
        }
        stopTimer();
        if (S.showingFeedback) {
          S.buffered = m;
          $("next").textContent = "See your result";
        } else {
          complete(m);
        }
        break;
      }
      case "DEADLINE_CHANGED":
        if (S.assessment && S.assessment.assessment_id === m.assessment_id) {
          S.assessment.deadline = m.deadline;
          S.assessment.time_limit_secs = null; // extended: the limit no longer caps it
          startTimer();
        }
        break;
      case "SCORE_CHANGED":
        // An admin regraded an answer: the attempt's totals as they now stand.
        if (S.assessment && S.assessment.assessment_id === m.assessment_id) {
          S.assessment.score = m.score;
          S.assessment.max_score = m.max_score;
          progress();
        } else if (S.doneId === m.assessment_id) {
          showResult(m.score, m.max_score, m.passed);
          $("done-reason").textContent = "An answer was regraded; this is your new score.";
        }
        break;
      case "SYSTEM_MESSAGE":
        tutorSays(m.text);
        break;
      case "AGENT_STARTED":
        if (m.task === "chat") streamStart();
        break;
      case "AGENT_THINKING":
        if (m.task === "chat" && typeof m.delta === "string") streamDelta(m.delta);
        break;
      case "AGENT_COMPLETED":
        break;
      case "SESSION_REPLACED":
        S.replaced = true;
        break;
      case "ERROR":
        error(m);
        break;
      default:
        break;
    }
  }

  function error(m) {
    const answer = pending();
    const aboutAnswer = answer && m.request_id === answer.request_id;
    if (m.code === "rate_limited") {
      if (aboutAnswer) setTimeout(sendPending, Math.max(1, m.retry_after_ms || 1000));
      return;
    }
    if (aboutAnswer) {
      if (FINAL.includes(m.code)) {
        setPending(null);
        $("answer-status").textContent = "Your answer was not recorded: " + m.message;
        if (S.assessment) {
          send({ type: "GET_QUESTION", assessment_id: S.assessment.assessment_id });
        }
      } else {
        $("answer-status").textContent = "The server could not record your answer yet (" +
          m.message + "); it will be sent again.";
        setTimeout(sendPending, 2000);
      }
      return;
    }
    if (m.request_id === "start") {
      showHome(m.message);
      return;
    }
    if (m.request_id === "chat") {
      tutorSays("(" + m.message + ")");
      return;
    }
    if (S.assessment) $("answer-status").textContent = m.message;
  }

  // --- screens ------------------------------------------------------------------------

  function only(id) {
    for (const section of ["sign-in", "home", "test", "done"]) {
      $(section).hidden = section !== id;
    }
    $("tutor").hidden = !(id === "test" || id === "done");
  }

  async function showHome(message) {
    S.assessment = null;
    S.question = null;
    stopTimer();
    only("home");
    $("home-error").textContent = message || "";
    $("home-title").focus();
    await loadLists();
  }

  async function loadLists() {
    let tests;
    let results;
    try {
      [tests, results] = await Promise.all([
        api("/api/tests", { token: S.token }),
        api("/api/me/assessments", { token: S.token }),
      ]);
    } catch (e) {
      if (e.status === 401) {
        window.Assessd.signOut("taker");
        return;
      }
      $("home-error").textContent = e.message;
      return;
    }
    const rows = tests.items.map((t) => {
      const label = t.status === "in_progress" ? "Resume" : "Start";
      const button = el("button", {
        type: "button", text: label, "data-test-id": t.id,
        disabled: t.status === "completed",
        "aria-label": label + " " + t.title,
        onclick: () => start(t.id),
      });
      return el("tr", { "data-test-id": t.id },
        el("td", { text: t.title }),
        el("td", { text: String(t.total_questions) }),
        el("td", { text: t.time_limit_secs ? minutes(t.time_limit_secs) : "none" }),
        el("td", { class: "attempts", text: t.attempts_used + " of " + t.max_attempts }),
        el("td", {}, t.status === "completed" ? el("span", { class: "hint", text: "No attempts left" }) : button));
    });
    fill($("tests").tBodies[0], ...rows);
    const past = results.items.slice().reverse().map((a) => el("tr", {},
      el("td", { text: a.title || a.test_id }),
      el("td", { text: String(a.attempt) }),
      el("td", { text: a.status === "completed" ? "completed" : "in progress" }),
      el("td", { text: num(a.score) + " / " + num(a.max_score) }),
      el("td", { class: a.passed ? "ok" : a.status === "completed" ? "error" : "",
        text: a.status !== "completed" ? "–" : a.passed ? "passed" : "not passed" }),
      el("td", { text: when(a.completed_at) })));
    fill($("results").tBodies[0], ...past);
    $("no-results").hidden = past.length > 0;
  }

  function minutes(secs) {
    return secs % 60 === 0 ? secs / 60 + " min" : Math.floor(secs / 60) + " min " + (secs % 60) + " s";
  }

  function start(testId) {
    $("home-error").textContent = "";
    if (!send({ type: "START_ASSESSMENT", test_id: testId, request_id: "start" })) {
      S.wantStart = testId;
      $("home-error").textContent = "Waiting for the connection…";
    }
  }

  function begin(m) {
    S.assessment = {
      assessment_id: m.assessment_id,
      test_id: m.test_id,
      title: m.title || m.test_id,
      total: m.total_questions,
      answered: m.answered || 0,
      score: m.score || 0,
      max_score: m.max_score,
      deadline: m.deadline,
      time_limit_secs: m.time_limit_secs,
    };
    S.showingFeedback = false;
    S.buffered = null;
    S.question = null;
    $("test-title").textContent = S.assessment.title;
    $("feedback").hidden = true;
    // Nothing of an earlier attempt stays on screen until this one's question arrives.
    $("question-form").hidden = true;
    $("q-heading").textContent = "";
    only("test");
    progress();
    startTimer();
  }

  function progress() {
    const a = S.assessment;
    const bar = $("progress");
    bar.max = a.total;
    bar.value = a.answered;
    $("progress-text").textContent = a.answered + " of " + a.total + " answered";
  }

  function startTimer() {
    stopTimer();
    const deadline = S.assessment && S.assessment.deadline ? Date.parse(S.assessment.deadline) : NaN;
    const timer = $("timer");
    if (isNaN(deadline)) {
      timer.textContent = "";
      return;
    }
    const tick = () => {
      const left = Math.max(0, deadline - (Date.now() + S.clockOffset));
      // Never more than the limit: the two clocks may differ by the network's delay.
      const limit = S.assessment && S.assessment.time_limit_secs;
      const secs = Math.min(Math.ceil(left / 1000), limit || Infinity);
      timer.textContent = left > 0
        ? "Time left " + Math.floor(secs / 60) + ":" + String(secs % 60).padStart(2, "0")
        : "Time is up";
      timer.classList.toggle("low", secs <= 60);
    };
    tick();
    S.timer = setInterval(tick, 1000);
  }

  function stopTimer() {
    clearInterval(S.timer);
    S.timer = null;
  }

  function showQuestion(q) {
    if (!S.assessment || S.assessment.assessment_id !== q.assessment_id) return;
    only("test");
    const answer = pending();
    const mine = answer && answer.assessment_id === q.assessment_id && answer.question_id === q.question_id;
    if (S.question && S.question.question_id === q.question_id && !$("question-form").hidden && !mine) {
      return; // already on screen; keep what the person has typed or ticked
    }
    S.question = q;
    $("question-form").dataset.questionId = q.question_id;
    $("feedback").hidden = true;
    $("question-form").hidden = false;
    $("q-heading").textContent = "Question " + q.position + " of " + q.total_questions;
    $("q-prompt").textContent = q.prompt;
    const choices = $("q-choices");
    const free = q.kind === "free_text";
    $("q-free").hidden = !free;
    $("q-text").value = free && mine && typeof answer.answer === "string" ? answer.answer : "";
    const type = q.kind === "multiple_choice" ? "checkbox" : "radio";
    fill(choices, ...(q.choices || []).map((c, i) => {
      const id = "choice-" + i;
      const chosen = mine && (Array.isArray(answer.answer) ? answer.answer.includes(c.id) : answer.answer === c.id);
      return el("label", { class: "choice", for: id },
        el("input", { type, id, name: "choice", value: c.id, checked: !!chosen }),
        el("span", { text: c.text }));
    }));
    if (q.kind === "multiple_choice") {
      choices.prepend(el("p", { class: "hint", text: "Choose every answer that applies." }));
    }
    lock(!!mine);
    $("answer-status").textContent = mine ? "Sending your answer…" : "";
    $("q-heading").focus();
  }

  function lock(locked) {
    $("q-fieldset").disabled = locked;
    $("submit").disabled = locked;
  }

  function readAnswer() {
    const q = S.question;
    if (q.kind === "free_text") return $("q-text").value;
    const ticked = Array.from($("q-choices").querySelectorAll("input:checked"), (i) => i.value);
    if (q.kind === "multiple_choice") return ticked.length ? ticked : null;
    return ticked.length ? ticked[0] : null;
  }

  $("question-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!S.question || pending()) return;
    const answer = readAnswer();
    if (answer === null) {
      $("answer-status").textContent = "Choose an answer first.";
      return;
    }
    setPending({
      assessment_id: S.question.assessment_id,
      question_id: S.question.question_id,
      answer,
      request_id: "answer-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 8),
    });
    lock(true);
    sendPending();
  });

  function feedback(m) {
    const answer = pending();
    if (answer && answer.assessment_id === m.assessment_id && answer.question_id === m.question_id) {
      setPending(null);
    }
    if (!S.assessment || S.assessment.assessment_id !== m.assessment_id) return;
    $("answer-status").textContent = "";
    $("question-form").hidden = true;
    const box = $("feedback");
    box.className = "feedback " + (m.correct ? "correct" : "incorrect");
    $("fb-verdict").textContent = m.correct ? "Correct" : m.score > 0 ? "Partly correct" : "Not correct";
    $("fb-score").textContent = "You earned " + num(m.score) + " of " + num(m.max_score) +
      (Number(m.max_score) === 1 ? " point." : " points.");
    $("fb-text").textContent = m.feedback || "";
    $("next").textContent = "Next";
    box.hidden = false;
    S.showingFeedback = true;
    box.focus();
  }

  $("next").addEventListener("click", () => {
    S.showingFeedback = false;
    const next = S.buffered;
    S.buffered = null;
    if (!next) {
      // The next step has not arrived yet (it follows the feedback); ask for it.
      $("feedback").hidden = true;
      if (S.assessment) send({ type: "GET_QUESTION", assessment_id: S.assessment.assessment_id });
      return;
    }
    if (next.type === "ASSESSMENT_COMPLETED") complete(next);
    else showQuestion(next);
  });

  function complete(m) {
    stopTimer();
    const title = S.assessment && S.assessment.assessment_id === m.assessment_id
      ? S.assessment.title : m.test_id;
    S.assessment = null;
    S.question = null;
    S.doneId = m.assessment_id;
    only("done");
    $("done-test").textContent = title;
    showResult(m.score, m.max_score, m.passed);
    const reasons = {
      all_answered: "You answered every question.",
      time_expired: "The time ran out.",
      ended_by_admin: "An administrator ended this attempt.",
    };
    $("done-reason").textContent = (reasons[m.reason] || "") +
      (m.completed_at ? " Finished " + when(m.completed_at) + "." : "");
    $("done-title").focus();
  }

  function showResult(score, maxScore, passed) {
    $("done-score").textContent = "Score: " + num(score) + " of " + num(maxScore);
    const verdict = $("done-verdict");
    verdict.textContent = passed ? "Passed" : "Not passed";
    verdict.className = "verdict " + (passed ? "passed" : "failed");
  }

  $("back").addEventListener("click", () => showHome());

  // --- tutor --------------------------------------------------------------------------

  function tutorSays(text) {
    if (S.streaming) {
      S.streaming.textContent = "Tutor: " + text;
      S.streaming = null;
      return;
    }
    $("chat-log").append(el("li", { text: "Tutor: " + text }));
    $("chat-log").scrollTop = $("chat-log").scrollHeight;
  }

  function streamStart() {
    S.streaming = el("li", { text: "Tutor: " });
    $("chat-log").append(S.streaming);
  }

  function streamDelta(delta) {
    if (!S.streaming) streamStart();
    S.streaming.textContent += delta;
    $("chat-log").scrollTop = $("chat-log").scrollHeight;
  }

  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("chat-input");
    const text = input.value.trim();
    if (!text) return;
    const message = { type: "CHAT_MESSAGE", text, request_id: "chat" };
    if (S.assessment) message.assessment_id = S.assessment.assessment_id;
    if (!send(message)) {
      $("chat-log").append(el("li", { text: "(You are offline; ask again once connected.)" }));
      return;
    }
    $("chat-log").append(el("li", { class: "mine", text: "You: " + text }));
    input.value = "";
  });

  $("continue-here").addEventListener("click", () => {
    S.replaced = false;
    S.attempts = 0;
    $("replaced").hidden = true;
    connect();
  });

  // --- start --------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    window.Assessd.signIn({
      page: "taker",
      role: "taker",
      accepts: ["taker"],
      onSignedIn: ({ token, user }) => {
        S.token = token;
        S.user = user;
        showHome();
        connect();
      },
    });
  });
})();
