// The overview updates itself: every few seconds it fetches its live part again (same origin,
// the session cookie) and swaps it in. Without JavaScript the page still shows the data.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) { return; }
  var status = document.getElementById("live-status");
  var every = parseInt(live.getAttribute("data-every"), 10) || 5000;
  function refresh() {
    fetch(live.getAttribute("data-src"), { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (r.redirected || !r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      })
      .then(function (html) {
        live.innerHTML = html;
        if (status) { status.textContent = ""; }
      })
      .catch(function () {
        if (status) { status.textContent = "Could not update; retrying."; }
      })
      .finally(function () { setTimeout(refresh, every); });
  }
  setTimeout(refresh, every);
})();
