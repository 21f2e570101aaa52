// tuneforge dashboard, monitoring and data tabs: `monitor report`, `monitor drift`, `data inspect`.
import { barChart, COLOURS, fmt, gauge } from "/dashboard/static/charts.js";
import { $, API, api, badge, figure, fill, h, state, table } from "/dashboard/static/common.js";

function share(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%"; }
function secs(x) { return x === null || x === undefined ? "–" : x < 1 ? `${Math.round(x * 1000)} ms` : `${x.toFixed(2)} s`; }

export async function showMonitoring() {
  const since = $("monitor-since").value;
  const report = await api(`${API}/monitor/report?since=${encodeURIComponent(since)}`);
  $("monitor-db").textContent = report.db || "";
  if (!report.requests) {
    fill($("monitor-cards"), h("p", { class: "muted" }, report.note || "No requests logged in this window."));
    fill($("monitor-charts"), );
    fill($("monitor-table"), );
  } else {
    const o = report.overall;
    fill($("monitor-cards"), figure(o.requests.toLocaleString(), "requests"), figure(share(o.error_rate), "errors"),
      figure(secs(o.latency_s.p50), "latency p50"), figure(secs(o.latency_s.p90), "latency p90"),
      figure(secs(o.ttft_s.p50), "time to first token p50"), figure(share(o.feedback_rate), "answers rated"),
      figure(share(o.approval), `approval (${o.approved} of ${o.rated})`), figure(o.corrected.toLocaleString(), "corrections"));
    const line = report.timeline;
    const versions = Object.keys(line.requests);
    const totals = line.labels.map((_, i) => versions.reduce((a, v) => a + line.requests[v][i], 0));
    fill($("monitor-charts"), 
      barChart(line.labels, versions.map((v) => ({ name: v, values: line.requests[v] })), { title: `requests per ${line.bucket}`, stacked: true, rotate: true, legend: true }),
      barChart(line.labels, ["p50", "p90", "p99"].map((p) => ({ name: `latency ${p}`, values: line.latency_s[p].map((v) => v ?? 0) })),
               { title: `latency of answered requests per ${line.bucket} (seconds)`, rotate: true }),
      barChart(line.labels, [{ name: "error rate", colour: "#dc2626", values: line.errors.map((e, i) => totals[i] ? e / totals[i] : 0) }],
               { title: `error rate per ${line.bucket}`, percent: true, rotate: true, minMax: 0.05 }));
    table($("monitor-table"), ["", ...report.columns.map((c) => ({ label: c, num: true }))],
      Object.entries(report.rows).map(([name, values]) => h("tr", {}, h("td", {}, name), values.map((v) => h("td", { class: "num" }, v)))));
  }
  const { runs } = await api(`${API}/runs`);
  const current = $("drift-run").value;
  fill($("drift-run"), ...runs.map((r) => new Option(r.name, r.name)));
  if (current) $("drift-run").value = current;
}

export async function checkDrift() {
  const run = $("drift-run").value;
  const out = $("drift-result");
  fill(out, h("p", { class: "muted" }, "measuring ..."));
  try {
    const since = $("monitor-since").value;
    const result = await api(`${API}/monitor/drift?run=${encodeURIComponent(run)}&since=${encodeURIComponent(since)}`);
    if (!result.signals.length) { fill(out, h("p", { class: "muted" }, result.note || "nothing measured")); return; }
    fill(out, 
      h("p", {}, badge(result.drifted ? "drift" : "no drift", result.drifted ? "flagged" : "passed"),
        ` ${result.production_prompts} production prompts against ${result.training_prompts} training prompts (${result.training_data.join(", ")})`),
      h("table", { class: "list" }, h("tr", {}, h("th", {}, "signal"), h("th", {}, "measure"), h("th", { class: "num" }, "raw"),
        h("th", { class: "num" }, "same-size training sample"), h("th", { class: "num" }, "drift score"), h("th", {}, "score vs threshold (line)"), h("th", {}, "")),
        result.signals.map((s) => h("tr", {}, h("td", {}, s.signal), h("td", {}, s.measure), h("td", { class: "num" }, fmt(s.raw, 3)),
          h("td", { class: "num" }, fmt(s.baseline_median, 3)), h("td", { class: "num" }, fmt(s.score, 3)),
          h("td", {}, gauge(Math.max(0, s.score), s.threshold, Math.max(0.5, s.threshold * 2.5, s.score * 1.2), s.flagged)),
          h("td", {}, s.flagged ? badge("flagged") : badge("ok", "passed"))))),
      Object.keys(result.skipped).length ? h("p", { class: "muted" }, Object.entries(result.skipped).map(([k, v]) => `${k}: ${v}`).join("; ")) : null);
  } catch (error) { fill(out, h("p", { class: "worse" }, error.message)); }
}

// ---------------------------------------------------------------------------------------------
// Data

export async function showData() {
  if (!$("inspect-model").value) $("inspect-model").value = state.settings.model || "";
}

export async function inspectFile(event) {
  event.preventDefault();
  const file = $("inspect-file").files[0];
  const out = $("inspect-result");
  fill(out, h("p", { class: "muted" }, `reading ${file.name} ...`));
  try {
    const query = new URLSearchParams({ filename: file.name, model: $("inspect-model").value, max_seq_length: $("inspect-max").value });
    const r = await api(`${API}/inspect?${query}`, { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } });
    const pairs = (o) => Object.entries(o).map(([k, v]) => `${k} ${v.toLocaleString()}`).join(", ") || "–";
    fill(out, 
      h("div", { class: "cards" }, figure(r.records.toLocaleString(), "valid records"), figure(r.problem_count.toLocaleString(), "records with problems"),
        figure(r.format, "format"), figure(r.duplicates.toLocaleString(), "exact duplicates"), figure(r.too_long.toLocaleString(), `longer than ${r.max_seq_length} tokens`),
        figure(Object.values(r.pii).reduce((a, b) => a + b, 0).toLocaleString(), "PII found")),
      h("div", { class: "hist" },
        barChart(r.histogram.map(([edge]) => edge), [{ name: "records", values: r.histogram.map(([, n]) => n) }],
                 { title: "tokens per record", values: true, rotate: true }),
        barChart(Object.keys(r.roles), [{ name: "messages", colour: COLOURS[1], values: Object.values(r.roles) }], { title: "messages by role", values: true, empty: "no chat messages" })),
      h("dl", { class: "kv" }, h("dt", {}, "kinds"), h("dd", {}, pairs(r.kinds)), h("dt", {}, "messages per record"), h("dd", {}, pairs(r.turns)),
        h("dt", {}, "labels"), h("dd", {}, pairs(r.labels)), h("dt", {}, "tokens per record"), h("dd", {}, r.lengths),
        h("dt", {}, "PII"), h("dd", {}, pairs(r.pii)), h("dt", {}, "tokenizer"), h("dd", {}, r.model)),
      r.problems.length ? [h("h3", {}, `Problems (${r.problem_count})`), h("table", { class: "list", id: "inspect-problems" },
        h("tr", {}, h("th", {}, "where"), h("th", {}, "why")), r.problems.map((p) => h("tr", {}, h("td", {}, p.where), h("td", {}, p.why))))]
        : h("p", { class: "better" }, "No problems: every record would be trained on."));
  } catch (error) { fill(out, h("p", { class: "worse" }, error.message)); }
}
