// tuneforge dashboard, registry tab: versions, lineage, aliases; promote and rollback through the CLI's functions.
import { $, API, api, badge, fill, h, state, table, when } from "/dashboard/static/common.js";

export async function showRegistry() {
  const reg = await api(`${API}/registry`);
  $("registry-path").textContent = reg.path;
  $("registry-empty").textContent = reg.versions.length ? "" : "No versions yet: register a finished run (Runs tab) or finish a job.";
  const byId = Object.fromEntries(reg.versions.map((v) => [v.id, v]));
  fill($("registry-aliases"), ...state.settings.aliases.map((alias) => h("div", { class: "alias" },
    badge(alias), h("strong", {}, reg.aliases[alias] || "(none)"),
    reg.aliases[alias] ? h("span", { class: "muted" }, { passed: "gates passed", failed: "gates failed", none: "no gates checked" }[byId[reg.aliases[alias]]?.gate_outcome]) : null,
    h("button", { type: "button", class: "small", id: `rollback-${alias}`, disabled: !reg.history.some((e) => e.name === alias),
                  onclick: () => registryAction("rollback", { alias }) }, "Roll back"))));
  // Lineage: each leaf's chain back to its base model, newest first.
  const parents = new Set(reg.versions.map((v) => v.parent).filter(Boolean));
  const leaves = reg.versions.filter((v) => !parents.has(v.id)).reverse();
  fill($("lineage"), ...leaves.map((leaf) => h("div", { class: "chain" },
    h("span", { class: "node base" }, shortModel(byId[leaf.lineage[leaf.lineage.length - 1]].base_model)),
    [...leaf.lineage].reverse().map((id) => [h("span", { class: "arrow" }, "→"),
      h("span", { class: "node" + (byId[id].aliases.length ? " live" : ""), title: byId[id].path },
        id, " ", byId[id].aliases.map((a) => badge(a)), " ", badge(byId[id].gate_outcome === "none" ? "no gates" : byId[id].gate_outcome, byId[id].gate_outcome))]))));
  table($("registry-table"), ["version", "aliases", "base model", "method", "parent", "gates",
                              { label: "val loss", num: true }, { label: "ppl general", num: true }, "created", ""],
    [...reg.versions].reverse().map((v) => h("tr", { "data-version": v.id },
      h("td", {}, h("strong", {}, v.id), v.note ? h("div", { class: "muted" }, v.note) : null),
      h("td", {}, v.aliases.map((a) => badge(a))), h("td", {}, shortModel(v.base_model)), h("td", {}, v.method), h("td", {}, v.parent || "–"),
      h("td", { title: v.gates.map((g) => g.reason).join("\n") }, badge(v.gate_outcome), v.gates.filter((g) => !g.passed).map((g) => h("div", { class: "muted" }, g.reason))),
      h("td", { class: "num" }, v.validation_loss), h("td", { class: "num" }, v.general_perplexity), h("td", {}, when(v.created)),
      h("td", {}, state.settings.aliases.map((alias) => h("button", { type: "button", class: "small", id: `promote-${v.id}-${alias}`,
        disabled: v.aliases.includes(alias), onclick: () => registryAction("promote", { version: v.id, alias }) }, `→ ${alias}`))))));
  table($("registry-history"), ["when", "alias", "change", "action"], [...reg.history].reverse().map((e) => h("tr", {},
    h("td", {}, when(e.created)), h("td", {}, badge(e.name)), h("td", {}, `${e.previous || "(none)"} → ${e.version}`), h("td", {}, e.action))));
}

function shortModel(name) { return name.length > 40 ? "…" + name.slice(-38) : name; }

async function registryAction(action, body) {
  const box = $("registry-message");
  try {
    const result = await api(`${API}/registry/${action}`, { json: body });
    await showRegistry();  // the table first: once the message shows, the page already says what changed
    box.hidden = false;
    box.className = "message " + (result.ok ? "ok" : "refused");
    fill(box, result.message);
    if (!result.ok && action === "promote") {
      box.append(h("div", {}, h("button", { type: "button", class: "small danger", id: "promote-force",
        onclick: () => registryAction("promote", { ...body, force: true }) }, "Promote anyway (force)")));
    }
  } catch (error) {
    box.hidden = false;
    box.className = "message refused";
    box.textContent = error.message;
  }
}
