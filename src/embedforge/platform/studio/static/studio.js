// Refreshes a page's live fragment (a running job, a starting deployment) until it says it is done:
// the server renders the fragment, this only swaps it in. No library, nothing fetched from elsewhere.
"use strict";

const POLL_MS = 1000;

function schedule(section) {
  if (section && section.dataset.active === "true") {
    setTimeout(() => refresh(section), POLL_MS);
  }
}

async function refresh(section) {
  let fresh = section;
  try {
    const response = await fetch(section.dataset.liveUrl, { credentials: "same-origin" });
    if (response.ok) {
      const holder = document.createElement("div");
      holder.innerHTML = await response.text();
      fresh = holder.querySelector("[data-live-url]") || section;
      if (fresh !== section) section.replaceWith(fresh);
    }
  } finally {
    schedule(fresh);
  }
}

// A form with data-confirm (a delete) asks first; cancelling the dialog sends nothing.
document.addEventListener("submit", (event) => {
  const question = event.target.dataset && event.target.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-live-url]").forEach(schedule);
});
