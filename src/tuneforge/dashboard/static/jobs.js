// tuneforge dashboard, jobs tab: the fine-tuning jobs API (/v1/files, /v1/fine_tuning/jobs), a job's live curve and events.
import { preferModel } from "/dashboard/static/chat.js";
import { $, API, POLL_MS, ago, api, badge, fill, h, lossChart, notice, repeat, state, table, track, when } from "/dashboard/static/common.js";

let selectedJob = null;

export async function showJobs() {
  if (!state.settings.jobs) {
    $("job-form").hidden = true;
    fill($("jobs-table"), );
    $("jobs-empty").textContent = "This server runs no fine-tuning jobs: `tuneforge platform MODEL` serves the jobs API and this tab.";
    return;
  }
  $("job-form").hidden = false;
  await fillModels($("job-models"));
  repeat(() => listJobs().catch((e) => notice(e.message)), Math.max(POLL_MS * 2, 1000));
  if (selectedJob) openJob(selectedJob);
}

async function fillModels(datalist) {
  const models = (await api("/v1/models")).data;
  fill(datalist, ...models.map((m) => h("option", { value: m.id })));
  if (!$("job-model").value && models.length) $("job-model").value = (models.find((m) => !m.parent && !m.id.startsWith("ft:")) || models[0]).id;
}

export async function listJobs() {
  const jobs = (await api("/v1/fine_tuning/jobs?limit=50")).data;
  $("jobs-empty").textContent = jobs.length ? "" : "No jobs yet: upload a training file and start one.";
  table($("jobs-table"), ["job", "status", "model", "fine-tuned model", "created", { label: "tokens", num: true }],
        jobs.map((job) => h("tr", { class: "clickable" + (job.id === selectedJob ? " selected" : ""), "data-job": job.id,
                                    onclick: () => openJob(job.id) },
          h("td", {}, job.id), h("td", {}, badge(job.status)), h("td", {}, job.model),
          h("td", {}, job.fine_tuned_model || "–"), h("td", {}, ago(job.created_at)),
          h("td", { class: "num" }, job.trained_tokens ? job.trained_tokens.toLocaleString() : "–"))));
}

// The grader of a reinforcement job, checked before anything is uploaded (the server checks its fields).
function graderOf(text) {
  if (!text.trim()) throw new Error("grader: a reinforcement job needs one (OpenAI's grader object, as JSON)");
  try { return JSON.parse(text); }
  catch (error) { throw new Error("grader: not JSON (" + error.message + ")"); }
}

export function showGrader() { $("job-grader-box").hidden = $("job-method").value !== "reinforcement"; }

function auto(value) { const text = value.trim(); return text === "" || text === "auto" ? "auto" : Number(text); }

async function uploadFile(file) {
  const form = new FormData();
  form.append("purpose", "fine-tune");
  form.append("file", file, file.name);
  return api("/v1/files", { method: "POST", body: form });
}

export async function createJob(event) {
  event.preventDefault();
  const status = $("job-form-status");
  $("job-create").disabled = true;
  try {
    let extension = null;  // checked before anything is uploaded
    if ($("job-tuneforge").value.trim()) {
      try { extension = JSON.parse($("job-tuneforge").value); }
      catch (error) { throw new Error("tuneforge run-file settings: not JSON (" + error.message + ")"); }
    }
    const grader = $("job-method").value === "reinforcement" ? graderOf($("job-grader").value) : null;
    status.textContent = "uploading " + $("job-train").files[0].name + " ...";
    const training = await uploadFile($("job-train").files[0]);
    const validation = $("job-valid").files[0] ? await uploadFile($("job-valid").files[0]) : null;
    const hyperparameters = { n_epochs: auto($("job-epochs").value), learning_rate_multiplier: auto($("job-lr").value),
                              batch_size: auto($("job-batch").value) };
    const method = $("job-method").value;
    const body = { model: $("job-model").value, training_file: training.id,
                   method: { type: method, [method]: { hyperparameters } } };
    if (method === "reinforcement") body.method.reinforcement.grader = grader;
    if (validation) body.validation_file = validation.id;
    if ($("job-suffix").value.trim()) body.suffix = $("job-suffix").value.trim();
    if (extension) body.tuneforge = extension;
    status.textContent = "creating the job ...";
    const job = await api("/v1/fine_tuning/jobs", { json: body });
    status.textContent = `created ${job.id}`;
    await listJobs();
    openJob(job.id);
  } catch (error) {
    status.textContent = "";
    notice(error.message);
  } finally {
    $("job-create").disabled = false;
  }
}

// The curve of a job: its run's metrics.jsonl when the dashboard can see the run, else the metrics events.
async function jobCurve(job, events) {
  const runDir = job.tuneforge && job.tuneforge.run_dir;  // the jobs API keeps one run directory per job
  const run = runDir ? runDir.split("/").filter(Boolean).pop() : null;
  if (run) {
    try { return (await api(`${API}/run/curve?run=${encodeURIComponent(run)}`)).points; } catch (e) { /* not under a root */ }
  }
  return events.filter((e) => e.type === "metrics" && e.data).map((e) => ({ step: e.data.step,
    train_loss: e.data.train_loss, eval_loss: e.data.valid_loss ?? e.data.eval_loss })).sort((a, b) => a.step - b.step);
}

async function openJob(id) {
  selectedJob = id;
  for (const row of document.querySelectorAll("#jobs-table tr[data-job]")) row.classList.toggle("selected", row.dataset.job === id);
  const box = $("job-detail");
  box.hidden = false;
  const draw = async () => {
    if (selectedJob !== id || location.hash.slice(1).split("/")[0] !== "jobs" && location.hash) return;
    const job = await api(`/v1/fine_tuning/jobs/${id}`);
    const events = (await api(`/v1/fine_tuning/jobs/${id}/events?limit=100`)).data;
    const points = await jobCurve(job, events);
    const live = ["validating_files", "queued", "running", "paused"].includes(job.status);
    const act = (verb) => h("button", { type: "button", class: verb === "cancel" ? "small danger" : "small", id: `job-${verb}`,
      onclick: async () => { try { await api(`/v1/fine_tuning/jobs/${id}/${verb}`, { method: "POST" }); draw(); } catch (e) { notice(e.message); } } }, verb);
    fill(box, 
      h("h2", {}, job.id, badge(job.status), live ? act("cancel") : null,
        job.status === "running" ? act("pause") : null, job.status === "paused" ? act("resume") : null),
      h("dl", { class: "kv" },
        h("dt", {}, "base model"), h("dd", {}, job.model),
        h("dt", {}, "fine-tuned model"), h("dd", {}, job.fine_tuned_model || "–"),
        h("dt", {}, "training file"), h("dd", {}, job.training_file),
        h("dt", {}, "trained tokens"), h("dd", {}, job.trained_tokens ? job.trained_tokens.toLocaleString() : "–"),
        job.error && job.error.message ? [h("dt", {}, "error"), h("dd", { class: "worse" }, job.error.message)] : null),
      h("div", { id: "job-chart" }, lossChart(points, "loss")),
      h("h3", {}, "Events"),
      h("div", { class: "events", id: "job-events" }, events.map((e) => h("div", {}, h("time", {}, new Date(e.created_at * 1000).toLocaleTimeString()), e.message))));
    if (job.status === "succeeded" && job.fine_tuned_model) {
      box.append(h("p", {}, h("a", { href: "#chat", onclick: () => preferModel(job.fine_tuned_model) }, `Chat with ${job.fine_tuned_model} →`)));
    }
    if (!live) { clearInterval(timer); listJobs().catch((e) => notice(e.message)); }
  };
  const timer = setInterval(() => draw().catch((e) => notice(e.message)), POLL_MS);
  track(timer);
  await draw();
}
