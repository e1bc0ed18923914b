"""The real ComfyUI web UI in Chromium, for tests/test_browser.py: launching the browser (or the
reason it cannot), a host serving the front end, the console watch and its allow-list, and
what the page knows about a loaded graph."""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("SPACETIME_CHROMIUM", "/usr/lib/chromium/chromium"))
SETUP_HINT = "`SPACETIME_BROWSER=1 make setup` (as root) installs Playwright, the front end and Chromium"

# Console errors that ComfyUI's front end 1.32.9 logs on every load of ComfyUI 0.3.75 itself, with
# no custom nodes at all, on a machine without network: (what the message says, where it came from).
# Anything else is a failure.
KNOWN_FRONTEND_NOISE: tuple[tuple[str, str], ...] = (
    # optional per-user files a fresh user folder does not have
    (r"status of 404", r"/user\.css$"),
    (r"status of 404", r"/api/userdata\?dir=(workflows|subgraphs)"),
    (r"status of 404", r"/api/userdata/comfy\.templates\.json$"),
    (r"status of 404", r"/favicon\.ico$"),
    # the Comfy Registry and release notes are online services; offline their names do not resolve
    (r"ERR_NAME_NOT_RESOLVED|ERR_INTERNET_DISCONNECTED", r"^https://api\.comfy\.org/"),
    # the settings store's own bug at start-up (GraphView's load -> a settings onChange)
    (r"^TypeError: Cannot read properties of undefined \(reading 'id'\)\n\s+at onChange ", r""),
)


def frontend_noise(text: str, url: str) -> bool:
    return any(re.search(msg, text) and re.search(where, url or "") for msg, where in KNOWN_FRONTEND_NOISE)


def missing_browser_reason() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"Playwright is not installed ({SETUP_HINT})"
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} ({SETUP_HINT})"
    try:
        import comfyui_frontend_package  # noqa: F401
    except ImportError:
        return f"comfyui-frontend-package is not installed ({SETUP_HINT})"
    return None


def require_browser() -> None:
    """Skip with the reason, except in CI (``CI`` set), where a missing browser is a failure."""
    reason = missing_browser_reason()
    if reason and os.environ.get("CI"):
        pytest.fail(f"CI must run the browser tests: {reason}")
    if reason:
        pytest.skip(reason)


def seed_user_settings(base: Path) -> None:
    """A fresh user folder opens the templates dialog over the canvas; a returning user's does not."""
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))


@dataclass
class Console:
    """Every console error and uncaught page error, in order; ``since(mark)`` the ones after it."""

    entries: list[tuple[str, str]] = field(default_factory=list)

    def attach(self, page) -> None:
        page.on("console", lambda m: self.entries.append((m.text, m.location.get("url", "")))
                if m.type == "error" else None)
        page.on("pageerror", lambda e: self.entries.append((f"{e.name}: {e.message}\n{e.stack or ''}", "")))

    def mark(self) -> int:
        return len(self.entries)

    def unexpected(self, since: int = 0) -> list[tuple[str, str]]:
        return [(t[:500], u) for t, u in self.entries[since:] if not frontend_noise(t, u)]


GRAPH_STATE_JS = """() => {
  const g = window.app.graph;
  const saved = g.serialize();
  return g._nodes.map(n => ({
    id: n.id, type: n.type, registered: !!LiteGraph.registered_node_types[n.type],
    has_errors: !!n.has_errors, size: [...n.size], min_size: [...n.computeSize()],
    widgets_values: (saved.nodes.find(s => s.id === n.id) || {}).widgets_values,
    widgets: (n.widgets || []).filter(w => !w.name.startsWith('$$')).map(w => ({
      name: w.name, type: w.type, value: w.value,
      min: w.options?.min, max: w.options?.max, step: w.options?.step2, round: w.options?.round,
      values: Array.isArray(w.options?.values) ? w.options.values : null})),
  }));
}"""

OPEN_CARD_JS = """async ([pack, name]) => {
  // as a user does: Browse Templates, the pack under Extensions, a click on the card titled `name`;
  // the dialog closes and the workflow opens as workflows/<name>.json. Null, or what went wrong.
  const until = async (what, f, ms = 15000) => {
    for (const end = performance.now() + ms; performance.now() < end; await new Promise(r => setTimeout(r, 20))) {
      const v = f(); if (v) return v;
    }
    throw new Error(`timed out waiting for ${what}`);
  };
  try {
    await window.app.extensionManager.command.execute('Comfy.BrowseTemplates');
    const nav = await until('the pack in the dialog', () => [...document.querySelectorAll('.p-dialog *')]
      .find(e => e.children.length === 0 && e.textContent.trim() === pack));
    nav.click();
    const card = await until(`the card ${name}`, () => {
      const all = document.querySelectorAll("[data-testid^='template-workflow-']");
      const hit = [...all].find(c => c.dataset.testid === `template-workflow-${name}`);
      if (!hit) all[all.length - 1]?.scrollIntoView();      // the dialog adds cards as its last one shows
      return hit;
    });
    card.scrollIntoView();
    card.click();
    await until('the workflow to open', () => !document.querySelector('.p-dialog-mask')
      && window.app.extensionManager.workflow.activeWorkflow?.path === `workflows/${name}.json`);
    return null;
  } catch (e) { return String(e); }
}"""

CLOSE_WORKFLOW_JS = "() => window.app.extensionManager.command.execute('Workspace.CloseWorkflow')"


DISMISS_BANNER_JS = """() => {
  // the front end's "Introducing Nodes 2.0" banner: its last button closes it
  const hint = [...document.querySelectorAll('button')].find(b => b.textContent.trim() === 'Try it out');
  let box = hint?.parentElement;
  while (box && box.querySelectorAll('button').length < 2) box = box.parentElement;
  const buttons = box ? box.querySelectorAll('button') : [];
  if (buttons.length) buttons[buttons.length - 1].click();
  return buttons.length > 0;
}"""

FIT_VIEW_JS = """async () => {
  await window.app.extensionManager.command.execute('Comfy.Canvas.FitView');
  window.app.canvas.setDirty(true, true);
}"""


def save_screenshot(page, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def keep_for_docs(path: Path) -> None:
    """Copy a screenshot into ``$SPACETIME_DOCS_SCREENSHOTS`` when set (the README's pictures)."""
    target = os.environ.get("SPACETIME_DOCS_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
