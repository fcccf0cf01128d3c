// pilot-stub monitor: live updates. Asks /live every 2 s whether what this page shows
// has changed and, if so, reloads it (keeping the keyboard focus); never while a form
// field is in use. No page content is ever written from here.
(function () {
  "use strict";
  var body = document.body;
  var url = body.getAttribute("data-live");
  var shown = body.getAttribute("data-version");
  var again = sessionStorage.getItem("monitor-focus");
  if (again) {
    sessionStorage.removeItem("monitor-focus");
    var target = document.getElementById(again);
    if (target) { target.focus(); }
  }
  if (!url) { return; }
  function busy() {
    var active = document.activeElement;
    return active !== null && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName);
  }
  function poll() {
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (answer) {
        if (answer && answer.version !== shown && !busy()) {
          var active = document.activeElement;
          if (active && active.id) { sessionStorage.setItem("monitor-focus", active.id); }
          location.reload();
        } else {
          setTimeout(poll, 2000);
        }
      })
      .catch(function () { setTimeout(poll, 5000); });
  }
  setTimeout(poll, 2000);
}());
