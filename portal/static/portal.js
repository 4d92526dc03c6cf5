// Every page: small improvements over pages that work without this file.
// Loaded as a file of its own, since the Content-Security-Policy forbids inline scripts.
(function () {
  "use strict";

  // Tables: on a phone each row shows as a card of "label: value" (portal.css); the
  // label of a cell is its column's heading. The webmail's message list has its own.
  document.querySelectorAll("main table").forEach(function (table) {
    if (table.classList.contains("messages") || !table.tHead) {
      return;
    }
    var labels = [];
    var heads = table.tHead.rows[0] ? table.tHead.rows[0].cells : [];
    Array.prototype.forEach.call(heads, function (cell) {
      for (var i = 0; i < (cell.colSpan || 1); i++) {
        labels.push(cell.textContent.trim());
      }
    });
    Array.prototype.forEach.call(table.tBodies, function (body) {
      Array.prototype.forEach.call(body.rows, function (row) {
        var column = 0;
        Array.prototype.forEach.call(row.cells, function (cell) {
          cell.setAttribute("data-label", cell.colSpan > 1 ? "" : labels[column] || "");
          column += cell.colSpan || 1;
        });
      });
    });
    table.classList.add("stack");
  });

  // Long actions (the hand-back): the parts marked data-live are fetched again every
  // few seconds and replaced, without a reload that would lose what is typed in a form.
  var live = document.querySelectorAll("[data-live][id]");
  if (!live.length || !window.fetch || !window.DOMParser) {
    return;
  }
  var EVERY_MS = 5000;
  function refresh() {
    fetch(window.location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        return response.ok ? response.text() : null;
      })
      .then(function (text) {
        if (text === null) {
          return;
        }
        var fresh = new DOMParser().parseFromString(text, "text/html");
        var going = false;
        live.forEach(function (part) {
          if (!part.isConnected) {
            return;
          }
          var found = fresh.getElementById(part.id);
          if (found && found.hasAttribute("data-live")) {
            part.replaceWith(document.importNode(found, true));
            going = true;
          } else {
            // Finished: say so, and stop asking.
            part.removeAttribute("data-live");
            var done = part.getAttribute("data-done");
            if (done) {
              var note = document.createElement("p");
              note.className = "flash notice";
              note.textContent = done;
              part.replaceChildren(note);
            }
          }
        });
        live = document.querySelectorAll("[data-live][id]");
        if (going && live.length) {
          window.setTimeout(refresh, EVERY_MS);
        }
      })
      .catch(function () {
        window.setTimeout(refresh, EVERY_MS * 3);
      });
  }
  window.setTimeout(refresh, EVERY_MS);
})();
