// tuneforge dashboard, runs tab: runs, one run's curve and tables, runs side by side, `tuneforge compare`.
import { COLOURS, fmt, lineChart } from "/dashboard/static/charts.js";
import { $, API, POLL_MS, ago, api, badge, changeCell, fill, h, lossChart, notice, repeat, showScore, table, when } from "/dashboard/static/common.js";

let selectedRuns = new Set();

export async function showRuns() {
  const { root, runs } = await api(`${API}/runs`);
  $("runs-root").textContent = root;
  $("runs-empty").textContent = runs.length ? "" : `No runs under ${root} (tuneforge serve --runs-dir DIR points elsewhere).`;
  table($("runs-table"), ["", "run", "status", "model", "method", { label: "step", num: true },
                          { label: "train loss", num: true }, { label: "val loss", num: true }, "updated"],
        runs.map((run) => h("tr", { class: "clickable", "data-run": run.name, onclick: (e) => { if (e.target.type !== "checkbox") openRun(run.name); } },
          h("td", {}, h("input", { type: "checkbox", checked: selectedRuns.has(run.name), onchange: (e) => {
            e.target.checked ? selectedRuns.add(run.name) : selectedRuns.delete(run.name);
            $("runs-compare").disabled = selectedRuns.size < 2; } })),
          h("td", {}, run.name), h("td", {}, badge(run.status)), h("td", {}, run.model || "–"), h("td", {}, run.method || run.task || "–"),
          h("td", { class: "num" }, run.max_steps ? `${run.step}/${run.max_steps}` : run.step),
          h("td", { class: "num" }, fmt(run.train_loss, 4)), h("td", { class: "num" }, fmt(run.eval_loss, 4)),
          h("td", {}, ago(run.updated)))));
  $("runs-compare").disabled = selectedRuns.size < 2;
  const wanted = decodeURIComponent(location.hash.split("/").slice(1).join("/"));
  if (wanted && runs.some((r) => r.name === wanted)) openRun(wanted);
}

async function openRun(name) {
  const run = await api(`${API}/run?run=${encodeURIComponent(name)}`);
  const box = $("run-detail");
  box.hidden = false;
  $("run-compare").hidden = true;
  const chart = h("div", {}, lossChart(run.curve, "loss"));
  const gates = run.gates;
  fill(box, 
    h("h2", {}, run.name, badge(run.status), run.status === "finished"
      ? h("button", { type: "button", class: "small", id: "run-register", onclick: () => registerRun(run.name) }, "Register in the registry") : null),
    h("dl", { class: "kv" }, h("dt", {}, "directory"), h("dd", {}, run.path), h("dt", {}, "model"), h("dd", {}, run.model || "–"),
      h("dt", {}, "method"), h("dd", {}, run.method || "–"), h("dt", {}, "final validation loss"), h("dd", {}, fmt(run.validation_loss, 4)),
      h("dt", {}, "gates"), h("dd", {}, gates ? [badge(gates.passed ? "passed" : "failed"), " ",
        (gates.gates || []).map((g) => g.reason || g.gate).join("; ")] : "none checked")),
    h("div", { class: "two" }, chart, h("div", {},
    h("h3", {}, "Base model vs fine-tuned"),
    run.table.length ? h("table", { class: "list figures" },
      h("tr", {}, h("th", {}, ""), h("th", { class: "num" }, "base model"), h("th", { class: "num" }, "fine-tuned"), h("th", { class: "num" }, "change")),
      run.table.map((row) => h("tr", {}, h("td", {}, row.label), h("td", { class: "num" }, showScore(row.base)),
                                h("td", { class: "num" }, showScore(row.tuned)), changeCell(row.change, row.better))))
      : h("p", { class: "muted" }, "No eval/summary.json yet (written when training ends)."),
    Object.keys(run.evaluations).length ? [h("h3", {}, "Evaluations (tuneforge eval)"), evaluationsTable(run.evaluations)] : null)),
    h("h3", {}, "Run file"), h("pre", { class: "config" }, JSON.stringify(run.config, null, 2)));
  if (run.status === "training") {
    let next = run.curve.length;
    let points = run.curve;
    repeat(async () => {
      const update = await api(`${API}/run/curve?run=${encodeURIComponent(name)}&start=${next}`);
      if (update.points.length) { points = points.concat(update.points); next = update.next; chart.replaceChildren(lossChart(points, "loss")); }
    }, POLL_MS * 2);
  }
  box.scrollIntoView({ behavior: "smooth", block: "nearest" });
}

function evaluationsTable(evaluations) {
  const rows = [];
  for (const [data, sides] of Object.entries(evaluations)) {
    const metrics = [...new Set(Object.values(sides).flatMap((m) => Object.keys(m)))];
    for (const metric of metrics) {
      rows.push(h("tr", {}, h("td", {}, data), h("td", {}, metric),
        h("td", { class: "num" }, fmt(sides.base?.[metric], 4)), h("td", { class: "num" }, fmt(sides.tuned?.[metric], 4))));
    }
  }
  return h("table", { class: "list figures" }, h("tr", {}, h("th", {}, "data"), h("th", {}, "metric"),
    h("th", { class: "num" }, "base"), h("th", { class: "num" }, "tuned")), rows);
}

async function registerRun(name) {
  try {
    const result = await api(`${API}/registry/register`, { json: { run: name } });
    notice("");
    alert(result.message);
  } catch (error) { notice(error.message); }
}

export async function compareRuns() {
  const names = [...selectedRuns];
  const data = await api(`${API}/compare?` + names.map((n) => "run=" + encodeURIComponent(n)).join("&"));
  const box = $("run-compare");
  box.hidden = false;
  $("run-detail").hidden = true;
  const curves = names.map((name, i) => ({ name, colour: COLOURS[i % COLOURS.length],
    points: data.curves[name].filter((p) => p.train_loss !== undefined).map((p) => [p.step, p.train_loss]) }));
  const valid = names.map((name, i) => ({ name: name + " (val)", colour: COLOURS[i % COLOURS.length], dots: true, dashed: true,
    points: data.curves[name].filter((p) => p.eval_loss !== undefined).map((p) => [p.step, p.eval_loss]) }));
  const head = h("tr", {}, h("th", {}, ""), h("th", { class: "num" }, "base model"), names.map((n) => h("th", { class: "num" }, n)));
  fill(box, 
    h("h2", {}, "Side by side: " + names.join(" · ")),
    lineChart([...curves, ...valid], { title: "loss", xLabel: "optimizer step", yLabel: "loss" }),
    h("h3", {}, "Base model vs each fine-tune"),
    h("table", { class: "list figures" }, head,
      h("tr", {}, h("td", {}, "final validation loss"), h("td", {}), names.map((n) => h("td", { class: "num" }, fmt(data.validation_loss[n], 4)))),
      data.table.map((row) => h("tr", {}, h("td", {}, row.label), h("td", { class: "num" }, showScore(row.base)),
                                 names.map((n) => h("td", { class: "num" }, showScore(row.tuned[n])))))),
    Object.keys(data.metrics).length ? [h("h3", {}, "Evaluations"), h("table", { class: "list figures" },
      h("tr", {}, h("th", {}, "metric"), names.map((n) => h("th", { class: "num" }, n))),
      Object.entries(data.metrics).map(([metric, values]) => h("tr", {}, h("td", {}, metric), names.map((n) => h("td", { class: "num" }, fmt(values[n], 4))))))] : null,
    h("h3", {}, "Settings that differ"),
    data.settings.length ? h("table", { class: "list" }, h("tr", {}, h("th", {}, "setting"), names.map((n) => h("th", {}, n))),
      data.settings.map((s) => h("tr", {}, h("td", {}, s.key), names.map((n) => h("td", {}, JSON.stringify(s.values[n]) ?? "–")))))
      : h("p", { class: "muted" }, "The run files are the same."),
    h("h3", {}, "Evaluate side by side on the same examples (tuneforge compare)"),
    h("form", { class: "row", onsubmit: (e) => startComparison(e, names) },
      h("label", {}, "Data file on the server ", h("input", { id: "compare-data", size: 40, required: true,
        value: (data.validation_data || "") })),
      h("label", {}, "First N records ", h("input", { id: "compare-limit", type: "number", value: 20, min: 1, style: "width:5rem" })),
      h("button", { class: "primary" }, "Evaluate")),
    h("div", { id: "compare-evaluations" }));
  repeat(() => showEvaluations(names).catch((e) => notice(e.message)), 4000);
  box.scrollIntoView({ behavior: "smooth", block: "nearest" });
}

async function startComparison(event, names) {
  event.preventDefault();
  try {
    await api(`${API}/compare`, { json: { runs: names, data: $("compare-data").value, limit: Number($("compare-limit").value) || null } });
    showEvaluations(names);
  } catch (error) { notice(error.message); }
}

async function showEvaluations(names) {
  const all = (await api(`${API}/compare/evaluations`)).evaluations.filter((e) => e.runs.join("\n") === names.join("\n"));
  fill($("compare-evaluations"), ...all.slice(0, 3).map((e) => {
    if (e.status !== "done") return h("div", {}, badge(e.status), ` ${e.data} — started ${ago(e.created)}`, h("pre", { class: "log" }, e.log || ""));
    return h("div", {}, h("p", {}, badge("done", "succeeded"), ` ${e.data} `, e.report
        ? h("a", { href: `${API}/compare/${e.id}/report/index.html`, target: "_blank" }, "full report") : null),
      h("table", { class: "list figures" }, h("tr", {}, h("th", {}, "metric"), e.models.map((m) => h("th", { class: "num" }, m))),
        e.rows.map((r) => h("tr", {}, h("td", {}, r.metric), r.values.map((v, i) => h("td", { class: "num " + r.directions[i] }, fmt(v, 4)))))),
      e.examples.length ? h("table", { class: "list" }, h("tr", {}, h("th", {}, "prompt"), h("th", {}, "reference"), e.models.map((m) => h("th", {}, m))),
        e.examples.map((x) => h("tr", {}, h("td", {}, x.prompt), h("td", {}, x.reference),
          x.outputs.map((o, i) => h("td", {}, o, h("div", { class: "muted" }, `${x.metric} ${fmt(x.scores[i], 2)}`)))))) : null);
  }));
}
