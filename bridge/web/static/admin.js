// The only script of the admin pages: live refresh of the debugger, and the copy button.
(function () {
  var rows = document.getElementById("debugger-rows");
  var live = document.getElementById("live");
  if (rows) {
    setInterval(function () {
      if (live && !live.checked) { return; }
      if (document.querySelector("#debugger-rows details[open]")) { return; }
      var url = rows.dataset.url + (rows.dataset.url.indexOf("?") < 0 ? "?" : "&") + "partial=1";
      fetch(url, {credentials: "same-origin"}).then(function (r) {
        return r.ok ? r.text() : null;
      }).then(function (html) { if (html !== null) { rows.innerHTML = html; } });
    }, 2000);
  }
  var copy = document.getElementById("copy-callback");
  if (copy) {
    copy.addEventListener("click", function () {
      fetch(copy.dataset.url, {method: "POST", credentials: "same-origin",
                               headers: {"X-CSRF-Token": copy.dataset.csrf}})
        .then(function (r) { return r.json(); })
        .then(function (body) { return navigator.clipboard.writeText(body.url); })
        .then(function () { document.getElementById("copy-status").textContent = "copied"; },
              function () { document.getElementById("copy-status").textContent = "copy failed"; });
    });
  }
})();
