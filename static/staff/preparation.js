// Preparation progress refreshes itself every 3 seconds while the study is preparing (a static
// file: the CSP allows no inline script). It swaps in the server-rendered fragment and stops once
// the fragment says preparation is over.
const refresh = async () => {
  const box = document.getElementById("preparation-progress");
  if (!box || box.dataset.active !== "1" || document.hidden) return;
  try {
    const response = await fetch(box.dataset.url, { credentials: "same-origin", cache: "no-store" });
    if (response.ok) box.outerHTML = await response.text();
  } catch { /* offline for a moment: the next tick tries again */ }
};
setInterval(refresh, 3000);
