// chatkit web chat: talks to this gateway's OpenAI-compatible API and nothing else.
// Model output is only ever inserted as text (textContent / Text nodes), never as HTML.
// URLs are relative to the page, so the gateway also works mounted under a prefix.
"use strict";

(() => {
  const API_KEY_STORAGE = "chatkit.apiKey"; // sessionStorage: gone when the tab closes
  const MODEL_STORAGE = "chatkit.model"; // localStorage: not a secret

  const $ = (id) => document.getElementById(id);
  const ui = {
    modelSelect: $("model-select"),
    modelCustom: $("model-custom"),
    newChat: $("new-chat"),
    settings: $("settings"),
    systemPrompt: $("system-prompt"),
    apiKey: $("api-key"),
    reloadModels: $("reload-models"),
    conversation: $("conversation"),
    emptyHint: $("empty-hint"),
    error: $("error"),
    composer: $("composer"),
    prompt: $("prompt"),
    send: $("send"),
    stop: $("stop"),
    status: $("status"),
  };

  // The conversation as sent upstream: {role, content} pairs, without the system prompt.
  let history = [];
  // The generation in progress, or null.
  let turn = null;

  class ChatError extends Error {}

  // ---- storage (may be unavailable, e.g. with storage disabled) -------------------

  function storageGet(storage, key) {
    try {
      return storage.getItem(key) || "";
    } catch {
      return "";
    }
  }

  function storageSet(storage, key, value) {
    try {
      if (value) storage.setItem(key, value);
      else storage.removeItem(key);
    } catch {
      // Not persisting is fine: the value still applies to this page.
    }
  }

  // ---- status and errors ----------------------------------------------------------

  function setStatus(text) {
    ui.status.textContent = text;
  }

  function showError(text) {
    ui.error.textContent = text;
    ui.error.hidden = false;
  }

  function clearError() {
    ui.error.textContent = "";
    ui.error.hidden = true;
  }

  function describeError(error) {
    if (typeof error === "string") return error;
    if (error && typeof error === "object") {
      const message = typeof error.message === "string" ? error.message : "";
      const kind = typeof error.type === "string" ? error.type : "";
      if (message && kind) return `${message} (${kind})`;
      if (message || kind) return message || kind;
    }
    return "unknown error";
  }

  // "HTTP 401: <error.message>" from an error response of the gateway.
  async function errorFromResponse(response) {
    let text = "";
    try {
      text = await response.text();
    } catch {
      // The body is lost; the status still says what happened.
    }
    let message = "";
    try {
      const parsed = JSON.parse(text);
      if (parsed && parsed.error !== undefined) message = describeError(parsed.error);
    } catch {
      // Not JSON: show the start of the body as it is.
    }
    if (!message) message = text.trim().slice(0, 500) || response.statusText || "request failed";
    return `HTTP ${response.status}: ${message}`;
  }

  function requestHeaders(extra) {
    const headers = Object.assign({}, extra);
    const key = ui.apiKey.value.trim();
    if (key) headers.Authorization = `Bearer ${key}`;
    return headers;
  }

  // ---- models ---------------------------------------------------------------------

  function chosenModel() {
    return ui.modelCustom.value.trim() || ui.modelSelect.value;
  }

  function fillModels(ids) {
    const remembered = storageGet(localStorage, MODEL_STORAGE);
    const keep = ui.modelSelect.value || remembered;
    while (ui.modelSelect.options.length > 1) ui.modelSelect.remove(1);
    for (const id of ids) {
      const option = document.createElement("option");
      option.value = id;
      option.textContent = id;
      ui.modelSelect.append(option);
    }
    if (keep && ids.includes(keep)) ui.modelSelect.value = keep;
    else if (ids.length > 0) ui.modelSelect.value = ids[0];
  }

  async function loadModels() {
    setStatus("Loading models\u2026");
    let response;
    try {
      response = await fetch("v1/models", { headers: requestHeaders(), cache: "no-store" });
    } catch (err) {
      showError(`Could not list models: the gateway is unreachable (${err.message}).`);
      setStatus("");
      return;
    }
    if (!response.ok) {
      showError(`Could not list models: ${await errorFromResponse(response)}`);
      if (response.status === 401) ui.settings.open = true;
      setStatus("");
      return;
    }
    let ids = [];
    try {
      const listing = await response.json();
      const data = listing && Array.isArray(listing.data) ? listing.data : [];
      ids = data.map((m) => m && m.id).filter((id) => typeof id === "string" && id);
    } catch {
      showError("Could not list models: the gateway's answer is not JSON.");
    }
    fillModels(ids);
    setStatus(ids.length === 1 ? "1 model available." : `${ids.length} models available.`);
  }

  // ---- conversation rendering -----------------------------------------------------

  function nearBottom() {
    const box = ui.conversation.parentElement;
    return box.scrollHeight - box.scrollTop - box.clientHeight < 48;
  }

  function scrollToEnd() {
    const box = ui.conversation.parentElement;
    box.scrollTop = box.scrollHeight;
  }

  function appendMessage(role, text) {
    const follow = nearBottom();
    const item = document.createElement("li");
    item.className = `message ${role}`;
    const label = document.createElement("span");
    label.className = "role";
    label.textContent = role === "user" ? "You" : "Assistant";
    const content = document.createElement("p");
    content.className = "content";
    const body = document.createTextNode(text);
    content.append(body);
    item.append(label, content);
    ui.conversation.append(item);
    ui.emptyHint.hidden = true;
    if (follow) scrollToEnd();
    return { item, label, body };
  }

  function addNote(item, text) {
    const note = document.createElement("span");
    note.className = "note";
    note.textContent = text;
    item.append(note);
  }

  function setBusy(busy) {
    ui.send.disabled = busy;
    ui.stop.disabled = !busy;
    ui.composer.setAttribute("aria-busy", busy ? "true" : "false");
  }

  // ---- SSE ------------------------------------------------------------------------

  // An incremental text/event-stream parser: text in, {type, data} events out.
  // Lines end with CRLF, LF or CR (a CR at the end of a read may be half a CRLF).
  class SSEParser {
    constructor(onEvent) {
      this.onEvent = onEvent;
      this.pending = "";
      this.data = [];
      this.type = "";
    }

    feed(text, final) {
      const buffer = this.pending + text;
      const eol = /\r\n|\r|\n/g;
      let start = 0;
      let match;
      while ((match = eol.exec(buffer)) !== null) {
        if (match[0] === "\r" && match.index === buffer.length - 1 && !final) break;
        this.line(buffer.slice(start, match.index));
        start = eol.lastIndex;
      }
      this.pending = buffer.slice(start);
      if (final) {
        // Be lenient with a last event that lacks its blank line.
        if (this.pending) this.line(this.pending);
        this.pending = "";
        this.line("");
      }
    }

    line(text) {
      if (text === "") {
        const data = this.data.join("\n");
        const type = this.type || "message";
        const dispatch = data !== ""; // as the SSE spec says: empty data, no event
        this.data = [];
        this.type = "";
        if (dispatch) this.onEvent({ type, data });
        return;
      }
      if (text.startsWith(":")) return; // a comment (keep-alive)
      const colon = text.indexOf(":");
      const field = colon === -1 ? text : text.slice(0, colon);
      let value = colon === -1 ? "" : text.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") this.data.push(value);
      else if (field === "event") this.type = value;
    }
  }

  function handleEvent(event, current) {
    if (current.done) return;
    if (event.data === "[DONE]") {
      current.done = true;
      return;
    }
    let payload;
    try {
      payload = JSON.parse(event.data);
    } catch {
      if (event.type === "error") throw new ChatError(event.data);
      throw new ChatError("The gateway sent an event that is not JSON.");
    }
    if (payload && payload.error !== undefined && payload.error !== null) {
      throw new ChatError(describeError(payload.error));
    }
    if (event.type === "error") throw new ChatError(describeError(payload));
    const choice = payload && Array.isArray(payload.choices) ? payload.choices[0] : undefined;
    if (!choice) return; // e.g. a usage-only chunk
    const delta = choice.delta;
    if (delta && typeof delta.content === "string" && delta.content) {
      const follow = nearBottom();
      current.text += delta.content;
      current.view.body.appendData(delta.content);
      if (follow) scrollToEnd();
    }
    if (choice.finish_reason) current.finishReason = choice.finish_reason;
    if (!current.model && typeof payload.model === "string" && payload.model) {
      current.model = payload.model;
      current.view.label.textContent = `Assistant \u00b7 ${payload.model}`;
    }
  }

  async function readStream(body, current) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    const parser = new SSEParser((event) => handleEvent(event, current));
    try {
      while (!current.done) {
        const { value, done } = await reader.read();
        if (done) {
          parser.feed(decoder.decode(), true);
          break;
        }
        parser.feed(decoder.decode(value, { stream: true }), false);
      }
    } finally {
      // After [DONE] or an error event nothing more is wanted: release the connection.
      reader.cancel().catch(() => {});
    }
  }

  // ---- a chat turn ----------------------------------------------------------------

  function messagesToSend() {
    const system = ui.systemPrompt.value.trim();
    const messages = history.map((m) => ({ role: m.role, content: m.content }));
    return system ? [{ role: "system", content: system }, ...messages] : messages;
  }

  async function send(text) {
    clearError();
    history.push({ role: "user", content: text });
    const userView = appendMessage("user", text);
    const current = {
      text: "",
      done: false,
      finishReason: null,
      model: "",
      controller: new AbortController(),
      userText: text,
      userView,
      view: appendMessage("assistant", ""),
    };
    current.view.item.setAttribute("aria-busy", "true");
    current.view.item.dataset.state = "streaming";
    turn = current;
    setBusy(true);
    setStatus("Generating\u2026");

    const body = { messages: messagesToSend(), stream: true };
    const model = chosenModel();
    if (model) body.model = model;

    try {
      let response;
      try {
        response = await fetch("v1/chat/completions", {
          method: "POST",
          headers: requestHeaders({
            "Content-Type": "application/json",
            Accept: "text/event-stream",
          }),
          body: JSON.stringify(body),
          signal: current.controller.signal,
          cache: "no-store",
        });
      } catch (err) {
        if (current.controller.signal.aborted) throw err;
        throw new ChatError(`The gateway is unreachable (${err.message}).`);
      }
      if (!response.ok) throw new ChatError(await errorFromResponse(response));
      if (!response.body) throw new ChatError("The gateway's answer has no body.");
      try {
        await readStream(response.body, current);
      } catch (err) {
        if (err instanceof ChatError || current.controller.signal.aborted) throw err;
        throw new ChatError(`The connection to the gateway was lost (${err.message}).`);
      }
      if (!current.done && !current.finishReason) {
        throw new ChatError("The answer ended early: the stream closed before it was complete.");
      }
      finish(current, "done", "");
    } catch (err) {
      if (current.controller.signal.aborted) finish(current, "stopped", "");
      else finish(current, "failed", err instanceof ChatError ? err.message : String(err));
    }
  }

  // Keep what arrived; a turn that produced nothing is withdrawn so it can be resent.
  function finish(current, outcome, message) {
    if (current.discarded) return; // "New chat" already cleared the page
    const { item } = current.view;
    item.removeAttribute("aria-busy");
    item.dataset.state = outcome;
    if (current.text) {
      history.push({ role: "assistant", content: current.text });
      if (outcome === "stopped") addNote(item, "Stopped.");
      else if (outcome === "failed") addNote(item, "Interrupted: the answer is incomplete.");
    } else if (outcome !== "done") {
      history.pop();
      item.remove();
      current.userView.item.remove();
      if (!ui.conversation.children.length) ui.emptyHint.hidden = false;
      if (!ui.prompt.value) ui.prompt.value = current.userText;
    }
    if (outcome === "failed") showError(message);
    if (turn === current) {
      turn = null;
      setBusy(false);
      const focused = document.activeElement;
      if (!focused || focused === document.body || focused === ui.stop) ui.prompt.focus();
    }
    const labels = { done: "Done.", stopped: "Stopped.", failed: "Failed." };
    setStatus(labels[outcome]);
  }

  function stop() {
    if (turn) turn.controller.abort();
  }

  // ---- wiring ---------------------------------------------------------------------

  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.prompt.value.trim();
    if (!text || turn) return;
    ui.prompt.value = "";
    send(text);
  });

  ui.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ui.composer.requestSubmit();
    }
  });

  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && turn) stop();
  });

  ui.stop.addEventListener("click", stop);

  ui.newChat.addEventListener("click", () => {
    if (turn) {
      turn.discarded = true;
      turn.controller.abort();
      turn = null;
      setBusy(false);
    }
    history = [];
    ui.conversation.replaceChildren();
    ui.emptyHint.hidden = false;
    clearError();
    setStatus("New conversation.");
    ui.prompt.focus();
  });

  ui.modelSelect.addEventListener("change", () => {
    storageSet(localStorage, MODEL_STORAGE, ui.modelSelect.value);
  });

  ui.apiKey.addEventListener("change", () => {
    storageSet(sessionStorage, API_KEY_STORAGE, ui.apiKey.value.trim());
    clearError();
    loadModels();
  });

  ui.reloadModels.addEventListener("click", () => {
    clearError();
    loadModels();
  });

  ui.apiKey.value = storageGet(sessionStorage, API_KEY_STORAGE);
  setBusy(false);
  loadModels();
})();
