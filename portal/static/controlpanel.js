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
