// Sales (/sales/): the page is complete without this file. With it, pointing at a day of the
// revenue chart reads its figures out below the chart, and the "To" date cannot be set
// before the "From" date.
(function () {
  "use strict";
  const readout = document.getElementById("chart-readout");
  const chart = document.getElementById("revenue-chart");
  if (readout && chart) {
    const fallback = readout.dataset.default || readout.textContent;
    const show = (slot) => {
      const data = slot.dataset;
      const vends = Number(data.vends);
      const failed = Number(data.failed);
      let text = `${data.label}: ${data.revenue} from ${vends} vend${vends === 1 ? "" : "s"}`;
      if (failed) text += `, ${failed} failed`;
      readout.textContent = text;
      chart.querySelectorAll(".revchart__slot[data-active]").forEach((other) => {
        delete other.dataset.active;
      });
      slot.dataset.active = "true";
    };
    chart.querySelectorAll(".revchart__slot").forEach((slot) => {
      slot.addEventListener("pointerenter", () => show(slot));
    });
    chart.addEventListener("pointerleave", () => {
      readout.textContent = fallback;
      chart.querySelectorAll(".revchart__slot[data-active]").forEach((slot) => {
        delete slot.dataset.active;
      });
    });
  }
  const form = document.getElementById("period-form");
  if (form) {
    const from = form.elements.namedItem("from");
    const to = form.elements.namedItem("to");
    const follow = () => { if (from.value) to.min = from.value; };
    from.addEventListener("change", follow);
    follow();
  }
})();
