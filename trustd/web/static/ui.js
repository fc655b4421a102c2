// Progressive enhancement only: every page works without this file.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // Graph: hovering an identity highlights the edges it takes part in.
  const svg = document.getElementById("graph");
  if (svg) {
    for (const node of svg.querySelectorAll(".node")) {
      node.addEventListener("mouseenter", () => {
        const id = node.dataset.id;
        svg.classList.add("focus");
        for (const edge of svg.querySelectorAll(".edge")) {
          edge.classList.toggle("lit", edge.dataset.source === id || edge.dataset.destination === id);
        }
      });
      node.addEventListener("mouseleave", () => svg.classList.remove("focus"));
    }
  }
  // Error pages: "Back" returns to the page the failed form came from.
  for (const link of document.querySelectorAll("a[data-back]")) {
    if (history.length > 1) {
      link.addEventListener("click", (event) => { event.preventDefault(); history.back(); });
    }
  }
});
