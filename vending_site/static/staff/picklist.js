// The pick-list page (templates/staff/picklist.html): choosing a route clears the location
// (and the other way round) and shows the list at once; the Print button prints it.
// A file, not inline: the Content-Security-Policy allows no inline script.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.querySelector("[data-picklist-form]");
  if (form) {
    for (const select of form.querySelectorAll("select[data-picklist-choice]")) {
      select.addEventListener("change", () => {
        const other = form.elements.namedItem(select.dataset.picklistChoice);
        if (select.value && other) other.value = "";
        form.requestSubmit();
      });
    }
  }
  const print = document.querySelector("[data-print]");
  if (print) {
    print.hidden = false;
    print.addEventListener("click", () => window.print());
  }
});
