// Fleet stock (/stock/): the page works without this file; with it, choosing a location or a
// route applies the filter at once, so the "Show" button is not needed.
(function () {
  "use strict";
  const form = document.getElementById("stock-filters");
  if (!form) return;
  form.querySelectorAll("[data-js-hide]").forEach((element) => { element.hidden = true; });
  form.querySelectorAll("select[data-autosubmit]").forEach((select) => {
    select.addEventListener("change", () => form.requestSubmit());
  });
})();
