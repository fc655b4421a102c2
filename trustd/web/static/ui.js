// Progressive enhancement only: every page works without this file.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // Graph: hovering an identity highlights the edges it takes part in.
  const graph = document.getElementById("graph");
  const svg = graph && graph.querySelector("svg");
  if (svg) {
    for (const node of svg.querySelectorAll("g.node")) {
      node.addEventListener("mouseenter", () => {
        const id = node.id;
        svg.classList.add("focus");
        for (const edge of svg.querySelectorAll("g.edge")) {
          const title = edge.querySelector("title");
          const ends = title ? title.textContent.split("->") : [];
          edge.classList.toggle("lit", ends.includes(id));
        }
      });
      node.addEventListener("mouseleave", () => svg.classList.remove("focus"));
    }
  }
  // Shortened identifiers: a click selects the whole value (in the title) for copying.
  for (const code of document.querySelectorAll("code.short[title]")) {
    code.addEventListener("click", () => {
      code.textContent = code.title;
      code.classList.remove("short");
      const range = document.createRange();
      range.selectNodeContents(code);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
    }, { once: true });
  }
  // Error pages: "Back" returns to the page the failed form came from.
  for (const link of document.querySelectorAll("a[data-back]")) {
    if (history.length > 1) {
      link.addEventListener("click", (event) => { event.preventDefault(); history.back(); });
    }
  }
});
