// The webmail's keyboard: j / k next and previous message (or row), o or Enter to open,
// r reply, a reply all, f forward, # or Delete to delete, c compose, / search.
// Everything also works without this file: every action is a link or a form.
(function () {
  "use strict";
  function typing(target) {
    return target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
  }
  function click(selector) {
    var found = document.querySelector(selector);
    if (found) { found.click(); return true; }
    return false;
  }
  var rows = Array.prototype.slice.call(document.querySelectorAll("table.messages tbody tr"));
  var at = -1;
  function pick(index) {
    if (!rows.length) return;
    at = Math.max(0, Math.min(rows.length - 1, index));
    rows.forEach(function (row, i) { row.classList.toggle("selected", i === at); });
    var link = rows[at].querySelector("a.open");
    if (link) link.focus();
  }
  document.querySelectorAll("[data-confirm]").forEach(function (button) {
    button.addEventListener("click", function (event) {
      if (!window.confirm(button.getAttribute("data-confirm"))) event.preventDefault();
    });
  });
  var compose = document.getElementById("compose");
  if (compose) {
    compose.addEventListener("submit", function (event) {
      var limit = parseInt(compose.getAttribute("data-limit"), 10);
      var files = document.getElementById("attachments").files, total = 0;
      for (var i = 0; i < files.length; i++) total += files[i].size;
      if (limit && total > limit) {
        event.preventDefault();
        window.alert(document.querySelector("label[for=attachments]").textContent);
      }
    });
  }
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
    var key = event.key, handled = true;
    if (rows.length && key === "j") pick(at + 1);
    else if (rows.length && key === "k") pick(at - 1);
    else if (rows.length && key === "x" && at >= 0) {
      var box = rows[at].querySelector("input[type=checkbox]");
      box.checked = !box.checked;
    }
    else if (!rows.length && key === "j") handled = click("#older");
    else if (!rows.length && key === "k") handled = click("#newer");
    else if (key === "r") handled = click("#reply");
    else if (key === "a") handled = click("#reply-all");
    else if (key === "f") handled = click("#forward");
    else if (key === "#" || key === "Delete") handled = click("#delete");
    else if (key === "u") handled = click("#back");
    else if (key === "c") handled = click("a.compose");
    else if (key === "/") { var q = document.getElementById("q"); if (q) q.focus(); else handled = false; }
    else handled = false;
    if (handled) event.preventDefault();
  });
})();
