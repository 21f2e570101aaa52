"""The registry as the dashboard shows it: versions with lineage, aliases and gates; promote, rollback, register.

Every action goes through the function the CLI uses (registry/commands.py's `promote`, which
refuses a version whose gates failed unless forced; registry/store.py's `rollback`;
registry/runs.py's `register_run`), and what that function would print is returned as the
message, so a refusal in the browser reads exactly as it does in a terminal.
"""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from tuneforge.dashboard.runs import finite
from tuneforge.registry.commands import key_figures, lineage, promote
from tuneforge.registry.runs import register_run
from tuneforge.registry.store import alias_history, aliases, list_versions, open_registry, resolve, rollback


def captured() -> tuple[Console, io.StringIO]:
    text = io.StringIO()
    return Console(file=text, width=200, no_color=True, soft_wrap=True), text


def state(path: Path) -> dict:
    """Versions (oldest first) with their aliases, lineage and gates; the alias history; nothing when no file exists."""
    if not path.is_file():
        return {"path": str(path), "exists": False, "versions": [], "aliases": {}, "history": []}
    conn = open_registry(path, create=False)
    try:
        held = aliases(conn)
        versions = []
        for version in list_versions(conn):
            loss, general = key_figures(version)
            gates = (version.gate or {}).get("gates", [])
            versions.append({
                "id": version.id, "created": version.created, "path": version.path, "base_model": version.base_model,
                "method": version.method, "parent": version.parent, "note": version.note,
                "aliases": [alias for alias, held_id in held.items() if held_id == version.id],
                "lineage": [v.id for v in lineage(conn, version)], "gate_outcome": version.gate_outcome,
                "gates": [{"passed": bool(g.get("passed")), "reason": g.get("reason", g.get("gate"))} for g in gates],
                "validation_loss": loss, "general_perplexity": general, "summary": version.eval.get("summary", {}),
            })
        return finite({"path": str(path), "exists": True, "versions": versions, "aliases": held,
                       "history": alias_history(conn)})
    finally:
        conn.close()


def promote_version(path: Path, version_id: str, alias: str, force: bool) -> dict:
    """registry/commands.py's `promote`: {ok, message}; a version whose gates failed is refused unless forced."""
    conn = open_registry(path, create=False)
    try:
        out, text = captured()
        code = promote(conn, resolve(conn, version_id), alias, force, out, out)
        return {"ok": code == 0, "exit_code": code, "message": text.getvalue().strip()}
    finally:
        conn.close()


def rollback_alias(path: Path, alias: str) -> dict:
    conn = open_registry(path, create=False)
    try:
        before, after = rollback(conn, alias)
        return {"ok": True, "message": f"{alias}: {before} -> {after} (rolled back)", "from": before, "to": after}
    finally:
        conn.close()


def register(path: Path, run_dir: Path, parent: str | None, note: str | None) -> dict:
    conn = open_registry(path, create=True)
    try:
        version = register_run(conn, run_dir, parent=parent or None, note=note or None)
        return {"ok": True, "id": version.id, "message": f"registered {version.id}: {version.path}"}
    finally:
        conn.close()
