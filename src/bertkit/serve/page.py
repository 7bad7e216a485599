"""The page `bertkit serve` shows at `/` for a QA model: paste a context, ask, see the answer highlighted."""

# The page at `/`: paste a context, ask, see the answer highlighted. `/?question=...&context=...` asks at once
# (what the headless-Chromium test loads).
PAGE = """<!doctype html><meta charset="utf-8"><title>bertkit question answering</title>
<style>body{font:16px sans-serif;max-width:50em;margin:2em auto}textarea,input{width:100%;box-sizing:border-box}
mark{background:#fd5}#shown{white-space:pre-wrap;margin-top:1em}</style>
<h1>Ask a question about a text</h1>
<textarea id="context" rows="10" placeholder="Paste the context here"></textarea>
<p><input id="question" placeholder="Your question"><p><button id="ask">Answer</button> <span id="answer"></span>
<div id="shown"></div>
<script>
const $ = (id) => document.getElementById(id);
async function ask() {
  const context = $("context").value, question = $("question").value;
  const r = await fetch("answer", {method: "POST", headers: {"Content-Type": "application/json"},
                                   body: JSON.stringify({question, context})});
  const body = await r.json(), a = r.ok ? body.answers[0] : null;
  $("answer").textContent = r.ok ? (a && a.text ? `${a.text} (score ${a.score.toFixed(3)})` : "(no answer)")
                                 : JSON.stringify(body.detail);
  const mark = document.createElement("mark");
  mark.textContent = a && a.text ? context.slice(a.start, a.end) : "";
  $("shown").replaceChildren(a && a.text ? context.slice(0, a.start) : context, mark, a && a.text ? context.slice(a.end) : "");
}
$("ask").onclick = ask;
const given = new URLSearchParams(location.search);
if (given.has("question") && given.has("context")) {
  $("question").value = given.get("question"); $("context").value = given.get("context"); ask();
}
</script>
"""
