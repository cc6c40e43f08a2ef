// The results site: sorting, filtering and the disagreement toggle. Plain JS, no library, no fetch:
// every page also reads fine with scripts off.
(function () {
  "use strict";

  function cellValue(row, index, type) {
    var cell = row.cells[index];
    if (!cell) return type === "num" ? -Infinity : "";
    var raw = cell.getAttribute("data-v");
    if (type === "num") {
      var n = parseFloat(raw !== null ? raw : cell.textContent);
      return isNaN(n) ? -Infinity : n;
    }
    return (raw !== null ? raw : cell.textContent).trim().toLowerCase();
  }

  function sortBy(table, index, th, ascending) {
    var body = table.tBodies[0];
    var type = th.getAttribute("data-type") || "text";
    Array.prototype.forEach.call(th.parentNode.cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, index, type), y = cellValue(b, index, type);
      var order = x < y ? -1 : x > y ? 1 : 0;
      return ascending ? order : -order;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }

  // A click sorts by a column (again: the other way); `?sort=key` or `?sort=-key` (a th's data-key)
  // sorts a filterable table when the page opens, so that a sorted view is a link.
  function initSorting() {
    var wanted = new URLSearchParams(window.location.search).get("sort") || "";
    var descending = wanted.charAt(0) === "-";
    var key = descending ? wanted.slice(1) : wanted;
    document.querySelectorAll("table.sortable").forEach(function (table) {
      if (!table.tHead || !table.tBodies.length) return;
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
        th.title = "sort by this column";
        th.addEventListener("click", function () {
          sortBy(table, index, th, th.getAttribute("aria-sort") !== "ascending");
        });
        if (key && th.getAttribute("data-key") === key && table.classList.contains("filterable")) {
          sortBy(table, index, th, !descending);
        }
      });
    });
  }

  function applyFilter(id) {
    var table = document.getElementById(id);
    if (!table || !table.tBodies.length) return;
    var input = document.querySelector('[data-filter="' + id + '"]');
    var text = input ? input.value.trim().toLowerCase() : "";
    var selects = document.querySelectorAll('[data-filter-column="' + id + '"]');
    var shown = 0, total = 0;
    Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
      total += 1;
      var ok = !text || row.textContent.toLowerCase().indexOf(text) >= 0;
      selects.forEach(function (s) {
        var want = s.value, attr = "data-" + s.getAttribute("data-column");
        if (want && row.getAttribute(attr) !== want && row.getAttribute(attr) !== "") ok = false;
      });
      row.classList.toggle("hidden", !ok);
      if (ok) shown += 1;
    });
    var count = document.querySelector('[data-count="' + id + '"]');
    if (count) count.textContent = shown + " of " + total + " shown";
  }

  function initFilters() {
    var params = new URLSearchParams(window.location.search);
    document.querySelectorAll("table.filterable").forEach(function (table) {
      var id = table.id;
      var input = document.querySelector('[data-filter="' + id + '"]');
      if (input) {
        if (params.get("filter")) input.value = params.get("filter");
        input.addEventListener("input", function () { applyFilter(id); });
      }
      document.querySelectorAll('[data-filter-column="' + id + '"]').forEach(function (s) {
        var key = s.getAttribute("data-column");
        if (params.get(key)) s.value = params.get(key);
        s.addEventListener("change", function () { applyFilter(id); });
      });
      applyFilter(id);
    });
  }

  function setDisagreementsOnly(button, on) {
    var table = document.getElementById(button.getAttribute("data-toggle-disagreements"));
    if (!table || !table.tBodies.length) return;
    Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
      row.classList.toggle("hidden", on && !row.hasAttribute("data-disagree"));
    });
    button.setAttribute("aria-pressed", on ? "true" : "false");
    button.textContent = on ? "show every candidate" : "show only the disagreements";
  }

  function initDisagreements() {
    document.querySelectorAll("[data-toggle-disagreements]").forEach(function (button) {
      button.addEventListener("click", function () {
        setDisagreementsOnly(button, button.getAttribute("aria-pressed") !== "true");
      });
      if (window.location.hash === "#disagreements") setDisagreementsOnly(button, true);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    initSorting();
    initFilters();
    initDisagreements();
    document.documentElement.setAttribute("data-site-ready", "1");
  });
})();
