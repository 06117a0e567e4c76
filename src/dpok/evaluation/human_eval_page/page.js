(function () {
  "use strict";
  var questions = ["q_text", "q_quality"];
  var pairs = Array.prototype.slice.call(document.querySelectorAll(".pair"));
  var storeKey = "human-eval:" + document.body.getAttribute("data-export");
  var rater = document.getElementById("rater");
  function load() {
    try { return JSON.parse(window.localStorage.getItem(storeKey) || "{}"); } catch (e) { return {}; }
  }
  function save(state) {
    try { window.localStorage.setItem(storeKey, JSON.stringify(state)); } catch (e) { /* storage off */ }
  }
  function answer(pair, question) {
    var checked = pair.querySelector("input[name='" + pair.id + "-" + question + "']:checked");
    return checked ? checked.value : "";
  }
  function refresh() {
    var answered = 0;
    var state = {rater: rater.value, answers: {}};
    pairs.forEach(function (pair) {
      var values = questions.map(function (q) { return answer(pair, q); });
      var complete = values.every(function (v) { return v !== ""; });
      pair.classList.toggle("done", complete);
      if (complete) { answered += 1; }
      state.answers[pair.getAttribute("data-pair-id")] = values;
    });
    document.getElementById("status").textContent = answered + " of " + pairs.length + " pairs answered";
    save(state);
  }
  function restore() {
    var state = load();
    if (state.rater) { rater.value = state.rater; }
    pairs.forEach(function (pair) {
      var values = (state.answers || {})[pair.getAttribute("data-pair-id")] || [];
      questions.forEach(function (q, i) {
        if (!values[i]) { return; }
        var input = pair.querySelector("input[name='" + pair.id + "-" + q + "'][value='" + values[i] + "']");
        if (input) { input.checked = true; }
      });
    });
  }
  function csvField(value) {
    var text = String(value);
    return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }
  function download() {
    var name = rater.value.trim();
    var message = document.getElementById("message");
    if (!name) { message.textContent = "Please enter your name or rater id first."; rater.focus(); return; }
    var lines = [["pair_id", "rater"].concat(questions).join(",")];
    pairs.forEach(function (pair) {
      var values = questions.map(function (q) { return answer(pair, q); });
      if (values.some(function (v) { return v !== ""; })) {
        lines.push([pair.getAttribute("data-pair-id"), name].concat(values).map(csvField).join(","));
      }
    });
    if (lines.length === 1) { message.textContent = "No answers yet."; return; }
    var blob = new Blob([lines.join("\r\n") + "\r\n"], {type: "text/csv"});
    var link = document.createElement("a");
    link.href = window.URL.createObjectURL(blob);
    link.download = "ratings-" + name.replace(/[^A-Za-z0-9_-]+/g, "_") + ".csv";
    document.body.appendChild(link);
    link.click();
    link.remove();
    message.textContent = "Saved " + (lines.length - 1) + " answers. Send the downloaded file back.";
  }
  restore();
  document.addEventListener("change", refresh);
  rater.addEventListener("input", refresh);
  document.getElementById("download").addEventListener("click", download);
  refresh();
})();
