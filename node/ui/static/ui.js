// pacsnode status pages: refresh live parts in place, reload pages of running jobs.
// Plain JavaScript, no dependencies; the pages work without it (they just do not refresh).
(function () {
  "use strict";
  function refresh(el) {
    var url = el.getAttribute("data-refresh");
    var interval = parseInt(el.getAttribute("data-interval") || "3000", 10);
    function tick() {
      if (document.hidden) { return; }
      fetch(url, {credentials: "same-origin", headers: {"X-Requested-With": "fetch"}})
        .then(function (response) {
          if (response.status === 401) { window.location.reload(); return null; }
          return response.ok ? response.text() : null;
        })
        .then(function (html) {
          if (html === null) { return; }
          el.innerHTML = html;
          var stamp = document.getElementById("stamp");
          if (stamp) { stamp.textContent = "updated " + new Date().toLocaleTimeString(); }
        })
        .catch(function () { /* the node is restarting: try again on the next tick */ });
    }
    window.setInterval(tick, interval);
  }
  document.addEventListener("DOMContentLoaded", function () {
    var live = document.querySelectorAll("[data-refresh]");
    for (var i = 0; i < live.length; i++) { refresh(live[i]); }
    var reload = document.body.getAttribute("data-reload");
    if (reload) {
      window.setTimeout(function () { window.location.reload(); }, parseInt(reload, 10));
    }
  });
})();
