// userd console: the only script. On an account page it refreshes the
// latest change-feed events every 2 seconds from /accounts/{id}/events
// (JSON), building the list with textContent only, so no value is ever
// parsed as HTML; and it moves the usage chart, which sums the whole
// window and so is its own page (/accounts/{id}/usage, rendered and
// escaped by the server), into the account page once loaded. The pages
// work without it (the list is rendered on load, the usage is a link).
"use strict";
(function () {
  var slot = document.getElementById("usage-slot");
  if (!slot || !slot.dataset.src) { return; }
  fetch(slot.dataset.src, { credentials: "same-origin" })
    .then(function (r) { return r.ok ? r.text() : null; })
    .then(function (html) {
      if (!html) { return; }
      // DOMParser runs no script; the nodes are the server's own markup.
      var usage = new DOMParser().parseFromString(html, "text/html").getElementById("usage");
      if (usage) { slot.replaceWith(document.importNode(usage, true)); }
    })
    .catch(function () { /* the link stays */ });
})();
(function () {
  var list = document.getElementById("events");
  if (!list || !list.dataset.src) { return; }
  var src = list.dataset.src;
  var last = "";
  function item(ev) {
    var li = document.createElement("li");
    li.dataset.id = String(ev.id);
    var t = document.createElement("time");
    t.textContent = ev.at;
    var k = document.createElement("strong");
    k.textContent = ev.kind;
    var s = document.createElement("span");
    s.textContent = ev.summary;
    li.append(t, " ", k, " ", s);
    if (ev.actor) {
      var a = document.createElement("span");
      a.className = "muted";
      a.textContent = "by " + ev.actor;
      li.append(" ", a);
    }
    return li;
  }
  function refresh() {
    fetch(src, { headers: { "Accept": "application/json" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (evs) {
        if (!evs) { return; }
        var key = evs.map(function (e) { return e.id; }).join(",");
        if (key === last) { return; }
        last = key;
        list.replaceChildren.apply(list, evs.map(item));
      })
      .catch(function () { /* the next tick tries again */ })
      .finally(function () { setTimeout(refresh, 2000); });
  }
  last = Array.prototype.map.call(list.querySelectorAll("li[data-id]"), function (li) { return li.dataset.id; }).join(",");
  setTimeout(refresh, 2000);
})();
