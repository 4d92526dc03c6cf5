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

  // Long actions (the hand-back): a part marked data-live names an address that answers
  // its figures alone (JSON); they are asked for every few seconds and written in, without
  // a reload that would lose what is typed in a form. That request is a background one:
  // it keeps no session alive and takes no notice meant for the next page.
  var live = document.querySelectorAll("[data-live][id]");
  if (!live.length || !window.fetch) {
    return;
  }
  var EVERY_MS = 5000;
  function finished(part) {
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
  function show(part, figures) {
    var bar = part.querySelector("progress");
    if (bar) {
      bar.max = figures.held || 1;
      bar.value = figures.held ? figures.handed_back : 1;
    }
    var numbers = part.querySelector(".numbers");
    if (numbers) {
      numbers.textContent = figures.text;
    }
  }
  function refresh(part) {
    var address = part.getAttribute("data-live");
    if (!address || !part.isConnected) {
      return;
    }
    // A redirect (the session has ended) is not followed: the part stops asking.
    fetch(address, {
      credentials: "same-origin",
      redirect: "manual",
      headers: { Accept: "application/json" },
    })
      .then(function (response) {
        if (!response.ok) {
          return null;
        }
        return response.json();
      })
      .then(function (figures) {
        if (figures === null) {
          return;
        }
        if (!figures.running) {
          finished(part);
          return;
        }
        show(part, figures);
        window.setTimeout(function () {
          refresh(part);
        }, EVERY_MS);
      })
      .catch(function () {
        window.setTimeout(function () {
          refresh(part);
        }, EVERY_MS * 3);
      });
  }
  live.forEach(function (part) {
    window.setTimeout(function () {
      refresh(part);
    }, EVERY_MS);
  });
})();
