// What the page reports with each answer: focus and visibility changes while the trial is on
// screen (times from the moment it was fully shown), and the viewport and device class.

const MAX_EVENTS = 200; // the API refuses more (services/responses.py MAX_EVENTS)

export class TrialClock {
  constructor() {
    this.t0 = null;
    this.events = [];
    this.onFocus = () => this.record("focus");
    this.onBlur = () => this.record("blur");
    this.onVisibility = () => this.record(document.visibilityState === "hidden" ? "hidden" : "visible");
    window.addEventListener("focus", this.onFocus);
    window.addEventListener("blur", this.onBlur);
    document.addEventListener("visibilitychange", this.onVisibility);
  }

  // The stimulus is on screen (images decoded and painted): response time counts from here.
  start() { this.t0 = performance.now(); }

  elapsed() { return this.t0 === null ? 0 : Math.max(0, Math.round(performance.now() - this.t0)); }

  record(type) {
    if (this.t0 === null || this.events.length >= MAX_EVENTS) return;
    this.events.push({ type, t_ms: this.elapsed() });
  }

  stop() {
    window.removeEventListener("focus", this.onFocus);
    window.removeEventListener("blur", this.onBlur);
    document.removeEventListener("visibilitychange", this.onVisibility);
  }
}

export function deviceInfo() {
  const width = Math.round(window.innerWidth);
  const height = Math.round(window.innerHeight);
  const coarse = window.matchMedia("(pointer: coarse)").matches;
  const shortSide = Math.min(window.screen.width || width, window.screen.height || height);
  const device = coarse ? (shortSide < 600 ? "phone" : "tablet") : "desktop";
  return { viewport_width: width, viewport_height: height, device, pointer: coarse ? "coarse" : "fine",
           pixel_ratio: Math.round((window.devicePixelRatio || 1) * 100) / 100 };
}
