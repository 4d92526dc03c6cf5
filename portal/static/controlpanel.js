// Control Panel, "Select user": suggestions as the admin types (3 characters on).
// The page works without this file: type the whole address and press "Add".
// Loaded as a file of its own, since the Content-Security-Policy forbids inline scripts.
(function () {
  "use strict";

  var MIN_TYPED = 3;
  var WAIT_MS = 200;
  var input = document.getElementById("address");
  var list = document.getElementById("address-suggestions");
  if (!input || !list || !window.fetch) {
    return;
  }
  var url = input.getAttribute("data-suggest-url");
  var listedText = input.getAttribute("data-listed") || "";
  var disabledText = input.getAttribute("data-disabled") || "";
  var timer = null;
  var latest = "";

  function show(items) {
    // Text only, never markup: names come from the directory.
    var options = items.map(function (item) {
      var option = document.createElement("option");
      var notes = [];
      if (item.listed) {
        notes.push(listedText);
      }
      if (item.disabled) {
        notes.push(disabledText);
      }
      option.value = item.mail;
      option.label = item.name + (notes.length ? " (" + notes.join(", ") + ")" : "");
      return option;
    });
    list.replaceChildren.apply(list, options);
  }

  function ask(typed) {
    latest = typed;
    fetch(url + "?q=" + encodeURIComponent(typed), {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    })
      .then(function (response) {
        return response.ok ? response.json() : [];
      })
      .then(function (items) {
        if (typed === latest) {
          show(Array.isArray(items) ? items : []);
        }
      })
      .catch(function () {
        // No suggestions then; typing the whole address still works.
      });
  }

  input.addEventListener("input", function () {
    var typed = input.value.trim();
    window.clearTimeout(timer);
    if (typed.length < MIN_TYPED) {
      latest = "";
      show([]);
      return;
    }
    timer = window.setTimeout(function () {
      ask(typed);
    }, WAIT_MS);
  });
})();

// Control Panel, "Add or remove many users at once": while the lines are sent and
// checked (up to a minute for 10,000), say so and how many lines went; the report
// replaces the page when all are done. Without this file the browser's own loading
// indicator is all there is.
(function () {
  "use strict";

  var form = document.getElementById("bulk-form");
  var shown = document.getElementById("bulk-progress");
  if (!form || !shown) {
    return;
  }
  form.addEventListener("submit", function () {
    var pasted = document.getElementById("addresses");
    var file = document.getElementById("csv_file");
    var count = document.getElementById("bulk-progress-lines");
    var lines = pasted
      ? pasted.value.split(/\r?\n/).filter(function (line) {
          return line.trim() !== "";
        }).length
      : 0;
    if (file && file.files && file.files.length) {
      count.textContent = count.getAttribute("data-file") + " (" + file.files[0].name + ")";
    } else {
      count.textContent = String(lines);
    }
    shown.hidden = false;
    form.setAttribute("aria-busy", "true");
  });
})();
