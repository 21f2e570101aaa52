// tuneforge dashboard: one page, six tabs, talking to the server's JSON API (/v1 and /dashboard/api).
import { $, API, api, notice, state, stopTimers } from "/dashboard/static/common.js";
import { createJob, listJobs, showGrader, showJobs } from "/dashboard/static/jobs.js";
import { compareRuns, showRuns } from "/dashboard/static/runs.js";
import { showRegistry } from "/dashboard/static/registry.js";
import { checkDrift, inspectFile, showData, showMonitoring } from "/dashboard/static/monitoring.js";
import { showChat, wireChat } from "/dashboard/static/chat.js";

const TABS = { jobs: showJobs, runs: showRuns, registry: showRegistry, monitoring: showMonitoring, data: showData, chat: showChat };

function route() {
  const name = (location.hash || "#jobs").slice(1).split("/")[0];
  const tab = TABS[name] ? name : "jobs";
  stopTimers();
  notice("");
  for (const link of document.querySelectorAll("#tabs a")) link.classList.toggle("active", link.dataset.tab === tab);
  for (const section of document.querySelectorAll("section.tab")) section.hidden = section.id !== `tab-${tab}`;
  TABS[tab]().catch((error) => notice(error.message));
}

async function start() {
  $("key").value = localStorage.getItem("tuneforge-key") || "";
  $("key").addEventListener("change", () => { localStorage.setItem("tuneforge-key", $("key").value); init(); });
  window.addEventListener("hashchange", route);
  $("job-form").addEventListener("submit", createJob);
  $("job-method").addEventListener("change", showGrader);
  $("jobs-refresh").addEventListener("click", () => listJobs().catch((e) => notice(e.message)));
  $("runs-refresh").addEventListener("click", () => showRuns().catch((e) => notice(e.message)));
  $("runs-compare").addEventListener("click", () => { stopTimers(); compareRuns().catch((e) => notice(e.message)); });
  $("monitor-refresh").addEventListener("click", () => showMonitoring().catch((e) => notice(e.message)));
  $("monitor-since").addEventListener("change", () => showMonitoring().catch((e) => notice(e.message)));
  $("drift-check").addEventListener("click", checkDrift);
  $("inspect-form").addEventListener("submit", inspectFile);
  wireChat();
  await init();
}

async function init() {
  try {
    state.settings = await api(`${API}/settings`);
  } catch (error) {
    notice(error.message + " (enter the server's API key above)");
    return;
  }
  if (!location.hash) location.hash = state.settings.jobs ? "#jobs" : "#runs";
  route();
}

start();
