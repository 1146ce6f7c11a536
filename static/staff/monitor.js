// The live monitor refreshes itself every 5 seconds (a static file: the admin's CSP allows no
// inline script). It swaps in the server-rendered fragment, so the numbers are never computed twice.
const box = document.getElementById("monitor");
if (box) {
  const refresh = async () => {
    if (document.hidden) return;
    try {
      const response = await fetch(`${window.location.pathname}?fragment=1`, { credentials: "same-origin", cache: "no-store" });
      if (response.ok) box.innerHTML = await response.text();
    } catch { /* offline for a moment: the next tick tries again */ }
  };
  setInterval(refresh, 5000);
}
