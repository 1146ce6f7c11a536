// Talking to the participant API without ever losing an answer.
//
// Contract: an answer is written to localStorage (with its idempotency key) before it is sent,
// and removed only after the server has confirmed it (2xx, or 409 with the stored answer). A
// send that fails for the network or the server (offline, timeout, 5xx, 429) is retried with
// backoff, indefinitely, with the same key: the server stores it exactly once. A reload, a
// crash or a closed tab finds the pending answer in localStorage and sends it before anything
// else, so the participant resumes at the first unanswered trial with nothing lost.

const RETRYABLE = new Set([408, 425, 429, 500, 502, 503, 504]);
const TIMEOUT_MS = 15000;

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

export class ApiError extends Error {
  constructor(status, data) {
    super((data && data.detail) || `The server answered ${status}.`);
    this.status = status;
    this.data = data || {};
  }
}

export class Api {
  /** @param {string} base  "/api/participate/<study>/"  @param {object} status  saving/saved/retrying callbacks */
  constructor(base, status) {
    this.base = base;
    this.status = status;
    this.wake = null;
    window.addEventListener("online", () => { if (this.wake) this.wake(); });
  }

  async once(method, path, body) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
    try {
      const response = await fetch(this.base + path, {
        method, credentials: "same-origin", cache: "no-store", signal: controller.signal,
        headers: { "Accept": "application/json", ...(body !== undefined ? { "Content-Type": "application/json" } : {}),
                   ...(method !== "GET" ? { "X-CSRFToken": csrfToken() } : {}) },
        body: body !== undefined ? JSON.stringify(body) : undefined,
      });
      let data = null;
      try { data = await response.json(); } catch { data = null; }
      return { status: response.status, data };
    } finally {
      clearTimeout(timer);
    }
  }

  // Retries network failures and server trouble with backoff (0.5 s doubling to 15 s), waking
  // early when the browser comes back online. Client errors (4xx) are returned to the caller.
  async request(method, path, body, { saving = false } = {}) {
    let delay = 500;
    for (let attempt = 0; ; attempt++) {
      if (saving) this.status.saving(attempt > 0);
      let result = null;
      try {
        result = await this.once(method, path, body);
      } catch {
        result = null; // offline, DNS, timeout, connection reset
      }
      if (result && !RETRYABLE.has(result.status)) {
        if (result.status >= 400 && result.status !== 409) throw new ApiError(result.status, result.data);
        return result;
      }
      this.status.retrying(Math.round(delay / 1000), navigator.onLine === false);
      await new Promise((resolve) => { this.wake = resolve; setTimeout(resolve, delay); });
      this.wake = null;
      delay = Math.min(delay * 2, 15000);
    }
  }

  get(path) { return this.request("GET", path); }
  post(path, body = {}, options = {}) { return this.request("POST", path, body, options); }
}

// The one pending answer of this study in this browser (a participant answers one trial at a time).
export class Outbox {
  constructor(study) { this.key = `studyapp:${study}:pending-answer`; }

  read() {
    try { return JSON.parse(localStorage.getItem(this.key) || "null"); } catch { return null; }
  }

  write(entry) {
    try { localStorage.setItem(this.key, JSON.stringify(entry)); } catch { /* private mode: memory only */ }
    this.memory = entry;
  }

  clear() {
    try { localStorage.removeItem(this.key); } catch { /* ignore */ }
    this.memory = null;
  }

  pending() { return this.read() || this.memory || null; }
}

export function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
