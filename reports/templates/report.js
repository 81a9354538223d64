// Behaviour of report.html: timeline filters by source and the SIP ladder's
// raw-message viewer. Everything the page shows is already in the HTML; the
// script only hides, shows and copies.
(function () {
  "use strict";

  function applyFilters(caseSection) {
    var shown = {};
    caseSection.querySelectorAll("input.src-filter").forEach(function (box) {
      shown[box.value] = box.checked;
    });
    caseSection.querySelectorAll("table.timeline tbody tr").forEach(function (row) {
      row.hidden = shown[row.getAttribute("data-source")] === false;
    });
  }

  function showRaw(arrow) {
    var section = arrow.closest("section.case");
    var source = document.getElementById(arrow.getAttribute("data-raw"));
    var view = section.querySelector("pre.raw-view");
    if (!source || !view) { return; }
    section.querySelectorAll(".sip-arrow.selected").forEach(function (a) { a.classList.remove("selected"); });
    arrow.classList.add("selected");
    view.textContent = source.textContent;
    var label = section.querySelector(".raw-label");
    if (label) { label.textContent = arrow.getAttribute("data-title"); }
  }

  document.querySelectorAll("section.case").forEach(function (section) {
    section.querySelectorAll("input.src-filter").forEach(function (box) {
      box.addEventListener("change", function () { applyFilters(section); });
    });
    section.querySelectorAll("button.filter-all").forEach(function (button) {
      button.addEventListener("click", function () {
        var on = button.getAttribute("data-on") === "1";
        section.querySelectorAll("input.src-filter").forEach(function (box) { box.checked = on; });
        applyFilters(section);
      });
    });
    section.querySelectorAll(".sip-arrow").forEach(function (arrow) {
      arrow.addEventListener("click", function () { showRaw(arrow); });
      arrow.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") { showRaw(arrow); event.preventDefault(); }
      });
    });
    applyFilters(section);
  });
  // A link such as report.html#c2-raw-3 opens that SIP message, so a bug
  // report can point at the exact message.
  var wanted = window.location.hash.slice(1);
  if (wanted) {
    var arrow = document.querySelector('.sip-arrow[data-raw="' + wanted.replace(/"/g, "") + '"]');
    if (arrow) {
      showRaw(arrow);
      arrow.closest("section.case").querySelector("pre.raw-view").scrollIntoView();
    }
  }
  document.documentElement.setAttribute("data-report-ready", "1");
})();
