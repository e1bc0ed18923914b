"""The pack as users see it: ComfyUI's real web UI (comfyui-frontend-package 1.32.9) in Chromium,
driven by Playwright. The templates browser lists the pack's workflows with their cards and full
titles, sorted A-Z by capability; a click on each card opens its workflow with the file's nodes,
no missing or errored node and no console error beyond the front end's own known noise
(``browser_page.KNOWN_FRONTEND_NOISE``), every widget showing the file's value and the schema's
choices and ranges, every node as large as the front end needs; a node added from the menu shows
all its widgets; and Run on the embedded text-to-video workflow shows a latent preview on
the sampler at each step (ComfyUI started with ``--preview-method auto``) and ends in a video
preview on the page; Run on the long-video card ends with the node's line saying what it wrote.

Screenshots go to a ``browser-screenshots`` folder under pytest's temporary folder (the failure
message names it); ``SPACETIME_DOCS_SCREENSHOTS=docs`` also copies the README's three there."""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest

from browser_page import (CHROMIUM, CLOSE_WORKFLOW_JS, DISMISS_BANNER_JS, FIT_VIEW_JS, GRAPH_STATE_JS, OPEN_CARD_JS,
                          Console, keep_for_docs, require_browser, save_screenshot, seed_user_settings)
from conftest import COMFY_DIR, ROOT
from spacetime_video.headless.templates import describe, title

pytestmark = [pytest.mark.host, pytest.mark.browser]

WORKFLOWS = ROOT / "workflows"
UI_WORKFLOWS = sorted(p.name.removesuffix(".json") for p in WORKFLOWS.glob("*.json"))   # the cards' titles
T2V = title("embedded_t2v")
PACK = "spacetime"   # the host's custom_nodes folder name, which names the pack's templates
ASKED = "a green triangle moves up across a white background"   # white: not a background of the embedded world

ALL_CARD_TITLES_JS = """async () => {
  // the dialog shows 24 cards and more as its last card scrolls into view: the titles of all, in order
  const cards = () => document.querySelectorAll("[data-testid^='template-workflow-']");
  for (let n = -1; n !== cards().length; ) {
    n = cards().length;
    cards()[n - 1].scrollIntoView();
    await new Promise(r => setTimeout(r, 150));
  }
  return [...cards()].map(c => c.querySelector('h3').textContent.trim());
}"""
CUT_TITLES_JS = """() => [...document.querySelectorAll("[data-testid^='template-workflow-'] h3")]
  .filter(h => h.scrollWidth > h.clientWidth + 1 || h.scrollHeight > h.clientHeight + 1).map(h => h.textContent)"""


@pytest.fixture(scope="module")
def ui_host(tmp_path_factory):
    require_browser()
    from spacetime_video.headless.host import ComfyHost
    base = tmp_path_factory.mktemp("comfy-ui")
    seed_user_settings(base)
    # latent previews as a user who asks for them starts ComfyUI (its default sends none)
    with ComfyHost(base, comfy_dir=COMFY_DIR, pack_link=PACK, web_ui=True,
                   extra_args=("--preview-method", "auto")) as host:
        yield host


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("browser-screenshots")


@pytest.fixture(scope="module")
def ui(ui_host):
    """(page, console) of one Chromium tab on the host's web UI, shared by the module."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 860})
            console = Console()
            console.attach(page)
            page.goto(ui_host.url)
            page.wait_for_function("window.app?.graph && window.LiteGraph", timeout=90_000)
            page.wait_for_timeout(500)   # the start-up requests settle
            page.evaluate(DISMISS_BANNER_JS)
            yield page, console
        finally:
            browser.close()


@pytest.fixture(scope="module")
def schema(ui_host) -> dict:
    return ui_host.client.object_info()


@pytest.fixture(scope="module")
def absent_models(ui_host) -> set[str]:
    """Catalog model files (Wan's) that the test host's model folders do not hold."""
    from spacetime_video.model.weights.catalog import load_catalog
    return {e.filename for e in load_catalog().values()
            if not (ui_host.base_dir / "models" / e.folder / e.filename).exists()}


def _inputs(info: dict) -> dict[str, list]:
    return {**info["input"].get("required", {}), **info["input"].get("optional", {})}


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-12)    # JavaScript numbers are doubles (seed ranges)
    return a == b


def widget_problems(node_type: str, widgets: list[dict], info: dict, absent_models: set[str]) -> list[str]:
    """Where a widget's choices or numeric range differ from the node's schema. A model file the
    host does not have (``absent_models``) is shown as the workflow names it, outside the choices:
    the server refuses it before running, naming the file."""
    problems = []
    spec = _inputs(info)
    for w in widgets:
        if w["name"] not in spec:      # the front end's own: control_after_generate, upload
            continue
        kind, opts = spec[w["name"]][0], (spec[w["name"]] + [{}])[1]
        where = f"{node_type}.{w['name']}"
        if isinstance(kind, list) or kind == "COMBO":
            choices = kind if isinstance(kind, list) else opts["options"]
            if w["values"] != choices:
                problems.append(f"{where}: choices {w['values']} != schema {choices}")
            if w["value"] not in choices and w["value"] not in absent_models:
                problems.append(f"{where}: value {w['value']!r} is not a choice")
        elif kind in ("INT", "FLOAT"):
            for key in ("min", "max", "step"):
                if key in opts and not _same(w[key], opts[key]):
                    problems.append(f"{where}: {key} {w[key]} != schema {opts[key]}")
            if not (w["min"] <= w["value"] <= w["max"]):
                problems.append(f"{where}: value {w['value']} outside [{w['min']}, {w['max']}]")
    return problems


def test_page_lists_the_packs_nodes_with_no_unexpected_console_errors(ui, schema):
    page, console = ui
    ours = sorted(k for k in schema if k.startswith("Spacetime"))
    registered = page.evaluate("() => Object.keys(LiteGraph.registered_node_types)")
    assert len(ours) >= 15 and not set(ours) - set(registered)
    assert console.unexpected() == []


@pytest.mark.parametrize("name", UI_WORKFLOWS)
def test_every_card_opens_its_workflow_with_the_files_nodes_and_values(ui, schema, absent_models, name):
    """A click on the pack's card opens the file's graph: the same nodes (ids and types), none
    missing or errored, every widget with the file's value and the schema's choices and ranges."""
    page, console = ui
    mark = console.mark()
    assert page.evaluate(OPEN_CARD_JS, [PACK, name]) is None
    try:
        state = {n["id"]: n for n in page.evaluate(GRAPH_STATE_JS)}
        saved = json.loads((WORKFLOWS / f"{name}.json").read_text())
        assert sorted((i, n["type"]) for i, n in state.items()) == sorted((n["id"], n["type"]) for n in saved["nodes"])
        assert [n["type"] for n in state.values() if not n["registered"]] == [], "missing node types"
        assert [n["type"] for n in state.values() if n["has_errors"]] == [], "nodes shown with errors"
        for node in saved["nodes"]:
            shown = state[node["id"]].get("widgets_values") or []
            assert shown == (node.get("widgets_values") or []), f"{name}: {node['type']}"
        problems = [p for n in state.values()
                    for p in widget_problems(n["type"], n["widgets"], schema.get(n["type"], {"input": {}}), absent_models)]
        assert problems == []
        # every node of the file is as large as the front end needs to show all it holds, and not
        # much taller (LoadImage's needs grow once its picture has loaded)
        sizes = [(n["type"], n["size"], [round(v) for v in state[n["id"]]["min_size"]]) for n in saved["nodes"]]
        assert [s for s in sizes if s[1][0] < s[2][0] or s[1][1] < s[2][1]] == [], "cut off"
        assert [s for s in sizes if s[1][1] > s[2][1] + 40 and s[0] != "LoadImage"] == [], "empty space"
        assert console.unexpected(mark) == []
    finally:
        page.evaluate(CLOSE_WORKFLOW_JS)     # one tab open at a time


def test_each_node_added_from_the_menu_opens_showing_all_its_widgets_without_empty_space(ui, schema):
    """A node the front end creates (as the node search and menu do) gets at least the size that
    shows every socket and widget, and no more height than its text boxes may take."""
    page, console = ui
    mark = console.mark()
    ours = sorted(k for k in schema if k.startswith("Spacetime"))
    sizes = page.evaluate("""types => types.map(t => {
        const n = LiteGraph.createNode(t); window.app.graph.add(n);
        const r = {type: t, size: [...n.size], min: [...n.computeSize()],
                   text_boxes: (n.widgets || []).filter(w => w.type === 'customtext').length};
        window.app.graph.remove(n);
        return r; })""", ours)
    assert [s["type"] for s in sizes] == ours
    for s in sizes:
        (w, h), (min_w, min_h) = s["size"], s["min"]
        assert w >= min_w - 0.5 and h >= min_h - 0.5, s                     # nothing cut off
        assert w <= 420 and h <= min_h + (120 if s["text_boxes"] else 0.5), s   # nothing empty
    assert console.unexpected(mark) == []


def test_templates_browser_lists_the_packs_workflows_with_their_cards(ui, ui_host, shots):
    page, console = ui
    mark = console.mark()
    listed = ui_host.client.get_json("/workflow_templates")
    assert sorted(listed[PACK]) == UI_WORKFLOWS            # UI workflows only: no API twins, no catalog
    for name in UI_WORKFLOWS:
        r = page.request.get(f"{ui_host.url}/api/workflow_templates/{PACK}/{name}.jpg")
        assert r.ok and r.headers["content-type"] == "image/jpeg", name
    page.evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    page.locator(".p-dialog").get_by_text(PACK, exact=True).first.click()   # Extensions -> the pack
    cards = page.locator("[data-testid^='template-workflow-']")
    cards.first.wait_for(timeout=15_000)
    shown = cards.evaluate_all("els => els.map(e => e.dataset.testid.replace('template-workflow-', ''))")
    assert shown and set(shown) <= set(UI_WORKFLOWS), shown
    # sorted A-Z, a user reads every title in full, grouped by capability
    page.locator(".p-dialog [aria-label='Sort by']").click()
    page.get_by_role("option", name=re.compile(r"^(A\s*→\s*Z|Alphabetical)")).click()
    titles = page.evaluate(ALL_CARD_TITLES_JS)
    assert sorted(titles) == UI_WORKFLOWS
    assert titles == page.evaluate("ts => [...ts].sort((a, b) => a.localeCompare(b))", titles)
    groups = [describe(t)[0] for t in titles]
    assert [g for i, g in enumerate(groups) if groups.index(g) == i] == \
        [g for i, g in enumerate(groups) if i == 0 or g != groups[i - 1]], groups     # each capability once, together
    assert page.evaluate(CUT_TITLES_JS) == []
    page.evaluate("() => document.querySelector(\"[data-testid^='template-workflow-']\").scrollIntoView()")
    # every card picture on screen has loaded (a card whose TITLE.jpg is missing shows a broken image)
    page.wait_for_timeout(1000)
    images = page.evaluate("""() => [...document.querySelectorAll("[data-testid^='template-workflow-'] img")]
        .filter(i => i.getBoundingClientRect().top < window.innerHeight).map(i => i.naturalWidth)""")
    assert images and all(w == 320 for w in images), images
    save_screenshot(page, shots, "ui_templates")
    page.locator(".p-dialog-mask .pi-times").first.click()     # the dialog's close button
    page.locator(".p-dialog-mask").wait_for(state="detached", timeout=10_000)
    assert console.unexpected(mark) == []


def test_run_on_embedded_t2v_shows_the_video_preview(ui, ui_host, shots):
    """Click Run as a user would: the job finishes and the Save Video node shows the clip."""
    page, console = ui
    mark = console.mark()
    try:
        assert page.evaluate(OPEN_CARD_JS, [PACK, T2V]) is None
        # a word the embedded model has not got: the expander must say what it used instead
        page.evaluate("""p => { const n = window.app.graph._nodes.find(n => n.title === 'Prompt');
                                n.widgets.find(w => w.name === 'prompt').value = p; }""", ASKED)
        page.evaluate(FIT_VIEW_JS)
        keep_for_docs(save_screenshot(page, shots, "ui_embedded_t2v"))
        page.evaluate("""() => { window.spacetimeProgress = []; window.spacetimePreviews = [];
            window.spacetimeExecuted = {};
            const api = window.app.api;
            api.addEventListener('progress', e => window.spacetimeProgress.push(e.detail));
            api.addEventListener('executed', e => { window.spacetimeExecuted[e.detail.node] = performance.now(); });
            api.addEventListener('b_preview_with_metadata', async e => {
              const t = performance.now(), image = await createImageBitmap(e.detail.blob);
              window.spacetimePreviews.push({node: e.detail.displayNodeId, t, size: [image.width, image.height]});
            }); }""")
        before = set(ui_host.client.get_json("/history"))
        t0 = time.monotonic()
        page.locator("[data-testid='queue-button']").click()
        job = None
        while time.monotonic() - t0 < 240:
            new = {k: v for k, v in ui_host.client.get_json("/history").items() if k not in before}
            job = next((v for v in new.values() if v.get("status", {}).get("completed")), None)
            if job or any(v.get("status", {}).get("status_str") == "error" for v in new.values()):
                job = job or next(iter(new.values()))
                break
            time.sleep(0.25)
        assert job and job["status"]["completed"], f"no finished job: {job and job['status']}"
        finished = time.monotonic() - t0
        video = page.locator("video[src*='embedded_t2v']")
        video.first.wait_for(state="visible", timeout=30_000)
        page.wait_for_function("() => [...document.querySelectorAll('video')].some(v => v.readyState >= 2)",
                               timeout=30_000)
        shown = time.monotonic() - t0
        page.evaluate(FIT_VIEW_JS)
        page.wait_for_timeout(300)
        readouts = page.evaluate("""() => Object.fromEntries(window.app.graph._nodes
            .map(n => [n.title || n.type, n.widgets?.find(w => w.name === 'spacetime_readout')?.element?.value])
            .filter(([, v]) => v))""")
        assert readouts["Prompt"].startswith("a green triangle moves up across a beige background\nnote: ")
        assert "'white'" in readouts["Prompt"] and "used 'beige'" in readouts["Prompt"], readouts
        assert "tokens" in readouts["Canvas / Patchify (Spacetime)"], readouts
        # the page got the sampler's step-by-step progress (what draws the node's progress bar)
        api = json.loads((WORKFLOWS / "api" / "embedded_t2v_api.json").read_text())
        (sampler,) = [k for k, v in api.items() if v["class_type"] == "SpacetimeSampler"]
        steps = [(p["value"], p["max"]) for p in page.evaluate("() => window.spacetimeProgress")
                 if str(p.get("node")) == sampler]
        assert steps and steps[-1] == (api[sampler]["inputs"]["steps"],) * 2, steps
        # and a latent preview of each step on the sampler, before the video was saved
        previews = page.evaluate("() => window.spacetimePreviews")
        saved_at = page.evaluate("() => window.spacetimeExecuted")[next(k for k, v in api.items()
                                                                        if v["class_type"] == "SpacetimeSaveVideo")]
        assert [p["node"] for p in previews] == [sampler] * len(steps), previews
        assert all(p["size"] == [512, 512] and p["t"] < saved_at for p in previews), previews   # 16 x 16, fit to 512
        assert page.evaluate("async () => Object.keys((await window.app.graphToPrompt()).output['2'].inputs)") \
            == list(json.loads((WORKFLOWS / "api" / "embedded_t2v_api.json").read_text())["2"]["inputs"])
        print(f"embedded t2v: Run -> job finished {finished:.1f}s, -> preview playing {shown:.1f}s")
        keep_for_docs(save_screenshot(page, shots, "ui_embedded_t2v_preview"))
        assert console.unexpected(mark) == []
    except BaseException:
        path = save_screenshot(page, shots, "FAILED_run_embedded_t2v")
        print(f"screenshot of the failure: {path}")
        raise


def test_run_on_the_long_video_card_says_on_the_node_what_it_wrote(ui, ui_host, shots):
    """Long video: the node's progress line (ComfyUI progress text) shows on the node in the page."""
    page, console = ui
    mark = console.mark()
    try:
        assert page.evaluate(OPEN_CARD_JS, [PACK, title("embedded_long_video")]) is None
        page.evaluate("""() => { const n = window.app.graph._nodes.find(n => n.type === 'SpacetimeLongVideo');
            n.widgets.find(w => w.name === 'storyboard').value =
              '2: a red circle moves to the right on a black background';
            n.widgets.find(w => w.name === 'steps').value = 3; }""")
        before = set(ui_host.client.get_json("/history"))
        t0 = time.monotonic()
        page.locator("[data-testid='queue-button']").click()
        job = None
        while time.monotonic() - t0 < 240 and job is None:
            new = {k: v for k, v in ui_host.client.get_json("/history").items() if k not in before}
            job = next((v for v in new.values() if v.get("status", {}).get("completed")
                        or v.get("status", {}).get("status_str") == "error"), None)
            time.sleep(0.25)
        assert job and job["status"]["completed"], f"no finished job: {job and job['status']}"
        page.wait_for_timeout(300)
        page.evaluate(FIT_VIEW_JS)           # the node's preview is drawn only where the view shows it
        page.locator("video[src*='embedded_long_video']").first.wait_for(state="visible", timeout=30_000)
        shown = page.evaluate("""() => window.app.graph._nodes.find(n => n.type === 'SpacetimeLongVideo')
            .widgets?.find(w => w.name === '$$node-text-preview')?.value""")
        assert shown and shown.startswith("done: 1 window (0 read back from checkpoints), 17 frames in "
                                          "embedded_long_video_"), shown
        # the video, not the last window's preview (drawn before a node's outputs, kept after the run)
        assert page.evaluate("""() => { const n = window.app.graph._nodes.find(n => n.type === 'SpacetimeLongVideo');
            return !window.app.nodePreviewImages[String(n.id)] && !n.imgs?.length; }""")
        page.evaluate(FIT_VIEW_JS)
        save_screenshot(page, shots, "ui_long_video_done")
        assert console.unexpected(mark) == []
    except BaseException:
        path = save_screenshot(page, shots, "FAILED_run_long_video")
        print(f"screenshot of the failure: {path}")
        raise


def test_node_search_on_an_empty_canvas_finds_the_packs_nodes(ui, shots):
    """Double-click on an empty canvas, type the pack's name: its nodes, under Spacetime > ...
    (last in the module: closing the search box makes the front end log its own TypeError)."""
    page, _ = ui
    page.evaluate("() => window.app.graph.clear()")
    box = page.locator(".comfy-vue-node-search-container input")
    for _ in range(3):     # a double-click the busy page did not take as one opens nothing: try again
        page.mouse.dblclick(700, 450)
        try:
            box.wait_for(state="visible", timeout=5000)
            break
        except Exception:  # noqa: BLE001 - tried again; the assertion below says what the page shows
            page.keyboard.press("Escape")
    assert box.is_visible(), "a double-click on the empty canvas opened no node search box"
    box.focus()
    page.keyboard.type("Spacetime")     # typed elsewhere, the letters would be the front end's shortcuts
    # the search box filters as it is typed (debounced): wait for the whole word's results
    options = "li[role='option']"
    try:
        page.wait_for_function(f"""() => {{
            const texts = [...document.querySelectorAll("{options}")].map(e => e.innerText).filter(t => t.trim());
            return texts.length >= 5 && texts.slice(0, 5).every(t => t.includes("Spacetime >"));
        }}""", timeout=15000)
    except Exception:  # noqa: BLE001 - the assertion below reports what the box shows
        pass
    keep_for_docs(save_screenshot(page, shots, "ui_node_search"))
    results = [r for r in page.locator(options).all_inner_texts() if r.strip()]
    assert len(results) >= 5 and all("Spacetime >" in r for r in results[:5]), results[:5]
    page.keyboard.press("Escape")
