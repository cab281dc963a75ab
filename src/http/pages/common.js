// What the three pages share: building elements (always with textContent: user ids,
// answers and prompts are data, never markup), calling the API, and signing in.
// The token is kept in sessionStorage, so each tab signs in on its own.
"use strict";

window.Assessd = (function () {
  /** The element with this id. */
  function $(id) {
    return document.getElementById(id);
  }

  /** A new element: `attrs` are properties or attributes, children are nodes or text. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key in node && typeof value !== "string") node[key] = value;
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** Empties `node` and puts `children` in it. */
  function fill(node, ...children) {
    node.replaceChildren();
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  /** An API error with the server's message. */
  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /** Calls the API; resolves to the JSON body, or rejects with an ApiError. */
  async function api(path, { method = "GET", token = null, body = undefined } = {}) {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (e) {
      throw new ApiError(0, "network", "The server cannot be reached. Check the connection and try again.");
    }
    let data = null;
    try {
      data = await response.json();
    } catch (e) {
      data = null;
    }
    if (!response.ok) {
      const error = (data && data.error) || {};
      throw new ApiError(response.status, error.code || "http_" + response.status,
        error.message || "The server answered " + response.status + ".");
    }
    return data;
  }

  /** The claims of a JWT, unverified (the server verifies; this is for display). */
  function claims(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const json = decodeURIComponent(Array.from(atob(part),
        (c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join(""));
      const value = JSON.parse(json);
      const roles = Array.isArray(value.role) ? value.role : [value.role];
      return { sub: String(value.sub), roles, exp: Number(value.exp) || 0 };
    } catch (e) {
      return null;
    }
  }

  function expired(token) {
    const c = claims(token);
    return !c || c.exp * 1000 <= Date.now();
  }

  const tokenKey = (page) => "assessd.token." + page;

  /**
   * Sign-in for one page. `page` names the token slot (taker, auditor, admin); `role` is
   * the role a development token is minted with; `accepts` the roles the page can use.
   * Calls `onSignedIn({token, user})` once signed in (now, if a token is kept).
   */
  async function signIn({ page, role, accepts, onSignedIn }) {
    const section = $("sign-in");
    const info = $("server-info");
    let config = { dev_sign_in: false };
    try {
      config = await api("/api/dev/config");
      if (info) {
        info.textContent = "assessd " + config.version + " · node " + config.node_id +
          " · events in " + config.database;
      }
    } catch (e) {
      if (info) info.textContent = "The server cannot be reached.";
    }
    const signOutButton = $("sign-out");
    if (signOutButton) {
      signOutButton.addEventListener("click", () => {
        // Signing out drops this page's token and an answer still waiting to be sent.
        sessionStorage.removeItem(tokenKey(page));
        sessionStorage.removeItem("assessd.pending");
        location.reload();
      });
    }
    // A token handed over by the host application in the fragment: keep it, then take it
    // out of the address bar (and so out of history and bookmarks).
    const fragment = new URLSearchParams(location.hash.slice(1));
    if (fragment.get("token")) {
      sessionStorage.setItem(tokenKey(page), fragment.get("token"));
      history.replaceState(null, "", location.pathname + location.search);
    }

    function finish(token) {
      const c = claims(token);
      const who = $("who");
      if (who) who.textContent = "Signed in as " + c.sub + " (" + c.roles.join(", ") + ")";
      const out = $("sign-out");
      if (out) out.hidden = false;
      section.hidden = true;
      onSignedIn({ token, user: c.sub });
    }

    function problem(token) {
      const c = claims(token);
      if (!c) return "That is not a token.";
      if (c.exp * 1000 <= Date.now()) return "That token has expired; sign in again.";
      if (!c.roles.some((r) => accepts.includes(r))) {
        return "This page needs a token with the role " + accepts.join(" or ") +
          "; this one has " + c.roles.join(", ") + ".";
      }
      return null;
    }

    const kept = sessionStorage.getItem(tokenKey(page));
    if (kept && !problem(kept)) {
      finish(kept);
      return;
    }
    sessionStorage.removeItem(tokenKey(page));
    showForm(kept ? problem(kept) : null);

    function showForm(message) {
      section.hidden = false;
      const status = el("p", { id: "sign-in-error", class: "error", role: "alert", text: message || "" });
      if (config.dev_sign_in) {
        const name = el("input", { type: "text", id: "name", name: "name", autocomplete: "username",
          maxlength: "64", required: true, "aria-describedby": "name-hint" });
        const form = el("form", { id: "sign-in-form", novalidate: true },
          el("label", { for: "name", text: "Your name" }), name,
          el("p", { id: "name-hint", class: "hint",
            text: "Letters, digits, spaces and _ - . @ (up to 64 characters)." }),
          el("button", { type: "submit", id: "sign-in-button", text: "Sign in" }));
        form.addEventListener("submit", async (event) => {
          event.preventDefault();
          status.textContent = "";
          try {
            const reply = await api("/api/dev/token", {
              method: "POST", body: { name: name.value.trim(), role },
            });
            sessionStorage.setItem(tokenKey(page), reply.token);
            finish(reply.token);
          } catch (e) {
            status.textContent = e.message;
            name.focus();
          }
        });
        fill(section,
          el("h1", { text: "Sign in" }),
          el("p", { class: "panel", id: "mode",
            text: "Development mode: this server has no configured signing key " +
              "(ASSESSD_JWT_SECRET is not set), so it mints a token for the name you enter, as " +
              role + ". Anyone who can reach it can sign in as anyone: use it on your own machine only." }),
          form, status);
        name.focus();
      } else {
        const input = el("textarea", { id: "token-input", name: "token", rows: "4", required: true,
          "aria-describedby": "token-hint" });
        const form = el("form", { id: "sign-in-form", novalidate: true },
          el("label", { for: "token-input", text: "Your token" }), input,
          el("p", { id: "token-hint", class: "hint",
            text: "Normally the application that sent you here opens this page with the token " +
              "in the address (…#token=…), and you never see this form." }),
          el("button", { type: "submit", id: "sign-in-button", text: "Sign in" }));
        form.addEventListener("submit", (event) => {
          event.preventDefault();
          const token = input.value.trim();
          const why = problem(token);
          if (why) {
            status.textContent = why;
            input.focus();
            return;
          }
          sessionStorage.setItem(tokenKey(page), token);
          finish(token);
        });
        fill(section,
          el("h1", { text: "Sign in" }),
          el("p", { class: "panel", id: "mode",
            text: "Sign in through your organisation: this server verifies tokens issued " +
              "elsewhere and does not mint them. Paste the token you were given." }),
          form, status);
      }
    }

  }

  /** Forgets this page's token (it was refused) and shows the sign-in form again. */
  function signOut(page) {
    sessionStorage.removeItem(tokenKey(page));
    location.reload();
  }

  /** A time for people: local date and time with seconds. */
  function when(iso) {
    if (!iso) return "";
    const date = new Date(iso);
    return isNaN(date) ? String(iso) : date.toLocaleString(undefined, {
      year: "numeric", month: "short", day: "numeric",
      hour: "2-digit", minute: "2-digit", second: "2-digit",
    });
  }

  /** A score: at most two decimals. */
  function num(value) {
    if (value === null || value === undefined) return "–";
    return String(Math.round(Number(value) * 100) / 100);
  }

  return { $, el, fill, api, ApiError, claims, expired, signIn, signOut, when, num };
})();
