"""Model catalog, manifest and downloads: names checked against the Comfy-Org workflow
templates, offline errors, a pre-populated hub cache used without network, the download node."""
from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

import pytest

from spacetime_video.headless import models as W
from spacetime_video.model.weights import catalog as M

from test_cli import cli, write

ROOT = Path(__file__).resolve().parents[1]
REPOS = {"Comfy-Org/Wan_2.1_ComfyUI_repackaged", "Comfy-Org/Wan_2.2_ComfyUI_Repackaged"}
LORA_REPOS = {"lightx2v/Wan2.1-Distill-Loras"}  # step-distill LoRAs from their authors, at the repo's top level
REQUIRED = ["wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.1-i2v-480p-14b", "wan2.1-i2v-720p-14b",
            "wan2.1-flf2v-720p-14b", "wan2.2-ti2v-5b", "wan2.2-t2v-a14b-high", "wan2.2-t2v-a14b-low",
            "wan2.2-i2v-a14b-high", "wan2.2-i2v-a14b-low", "wan2.1-vae", "wan2.2-vae",
            "umt5-xxl-fp16", "umt5-xxl-fp8", "clip-vision-h"]


def tiny_safetensors() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + struct.pack("<2f", 1.0, 2.0)


def test_catalog_has_every_required_model_with_consistent_fields():
    catalog = M.load_catalog()
    assert set(REQUIRED) <= set(catalog)
    for e in catalog.values():
        assert (e.repo in REPOS and e.path.startswith("split_files/" + e.folder + "/")) or (
            e.repo in LORA_REPOS and e.folder == "loras"), e.id
        assert e.path.endswith(".safetensors") and e.filename == e.path.rsplit("/", 1)[-1]
        assert e.folder in ("diffusion_models", "vae", "text_encoders", "clip_vision", "loras")
        assert e.size is None or (isinstance(e.size, int) and e.size > 0)
        assert e.sha256 is None or (len(e.sha256) == 64 and int(e.sha256, 16) >= 0)


URL = re.compile(r"huggingface\.co/([\w.-]+/[\w.-]+)/(?:resolve|blob)/main/([\w./-]+?\.safetensors)")


def _template_model_refs() -> tuple[set[tuple[str, str]], dict[tuple[str, str], str]]:
    """(repo, path) of every model URL in the Comfy-Org templates (node properties and notes),
    and the ComfyUI folder the node properties give for it."""
    urls, folders = set(), {}
    for pkg in ("media_video", "media_other", "media_image", "media_api"):
        mod = pytest.importorskip(f"comfyui_workflow_templates_{pkg}")
        for f in (Path(mod.__file__).parent / "templates").glob("*.json"):
            text = f.read_text()
            urls.update(URL.findall(text))
            wf = json.loads(text)
            if "nodes" not in wf:
                continue
            nodes = list(wf["nodes"])
            for sg in (wf.get("definitions") or {}).get("subgraphs") or []:
                nodes += sg["nodes"]
            for n in nodes:
                for m in (n.get("properties") or {}).get("models") or []:
                    for ref in URL.findall(m.get("url", "")):
                        folders[ref] = m.get("directory")
    return urls, folders


def test_catalog_names_match_the_comfy_org_templates():
    urls, folders = _template_model_refs()
    catalog = M.load_catalog()
    raw = json.loads(M.CATALOG_PATH.read_text())["models"]
    checked = 0
    for mid, e in catalog.items():
        ref = (e.repo, e.path)
        if ref in folders:
            assert folders[ref] == e.folder, f"{mid}: the templates put it in {folders[ref]}"
        if raw[mid]["name_verified_by"].startswith("comfyui-workflow-templates"):
            assert ref in urls, f"{mid}: {e.repo}/{e.path} is not linked by any template"
            checked += 1
    assert checked >= 14 and len(folders) >= 10


def test_manifest_names_existing_workflows_and_catalog_ids():
    manifest = W.load_manifest()
    catalog = M.load_catalog()
    assert "Test pattern - No model.json" in manifest
    # an API twin shares its UI workflow's entry
    assert manifest["wan21_t2v_1.3b_t2v_api.json"] == manifest["Text to video - Wan 2.1 T2V 1.3B.json"] != []
    for name, ids in manifest.items():
        folder = ROOT / "workflows" / ("api" if name.endswith("_api.json") else "")
        assert (folder / name).is_file(), f"manifest lists missing workflow {name}"
        assert set(ids) <= set(catalog), f"{name}: unknown ids {set(ids) - set(catalog)}"


def test_unknown_id_lists_valid_ids():
    with pytest.raises(M.ModelError, match="unknown model id.*wan2.1-vae"):
        M.lookup(["wan9"])


def test_offline_download_error_names_repo_file_and_destination(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    (entry,) = M.lookup(["wan2.2-vae"])
    with pytest.raises(M.ModelError) as err:
        M.download(entry, tmp_path / "models")
    msg = str(err.value)
    assert "Comfy-Org/Wan_2.2_ComfyUI_Repackaged" in msg and "split_files/vae/wan2.2_vae.safetensors" in msg
    assert str(tmp_path / "models" / "vae" / "wan2.2_vae.safetensors") in msg and "HF_HUB_OFFLINE" in msg
    assert not (tmp_path / "models" / "vae" / "wan2.2_vae.safetensors").exists()


def fake_hub_cache(hf_home: Path, repo: str, path: str, data: bytes) -> Path:
    """The hub's cache layout: blobs/<etag>, refs/main, snapshots/<commit>/<path> -> blob."""
    root = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    blob = root / "blobs" / "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit / path
    snap.parent.mkdir(parents=True)
    snap.symlink_to(os.path.relpath(blob, snap.parent))
    return blob


def test_prepopulated_hub_cache_is_used_without_network(tmp_path):
    (entry,) = M.lookup(["wan2.1-vae"])
    blob = fake_hub_cache(tmp_path / "hf", entry.repo, entry.path, tiny_safetensors())
    models = tmp_path / "models"
    r = cli("models", "download", "wan2.1-vae", "--models-dir", str(models),
            env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    dest = models / "vae" / "wan_2.1_vae.safetensors"
    assert r.stdout.strip() == str(dest)
    assert dest.read_bytes() == blob.read_bytes()
    assert dest.stat().st_ino == blob.stat().st_ino  # hard-linked, not copied
    # `models check` of a workflow naming that file now passes; a missing one fails with the command
    wf = write(tmp_path / "w.json", {"1": {"class_type": "VAELoader", "inputs": {"vae_name": dest.name}},
                                     "2": {"class_type": "CLIPVisionLoader",
                                           "inputs": {"clip_name": "clip_vision_h.safetensors"}}})
    r = cli("models", "check", str(wf), "--models-dir", str(models))
    assert r.returncode == 2 and "models download clip-vision-h" in r.stderr, r.stderr + r.stdout
    assert "ok       wan2.1-vae" in r.stdout


def test_cli_offline_download_exits_1_with_the_exact_names(tmp_path):
    r = cli("models", "download", "umt5-xxl-fp8", "--models-dir", str(tmp_path / "m"),
            env={"HF_HOME": str(tmp_path / "hf")})
    assert r.returncode == 1
    assert "Comfy-Org/Wan_2.1_ComfyUI_repackaged" in r.stderr
    assert "split_files/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors" in r.stderr
    assert str(tmp_path / "m" / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors") in r.stderr


def test_verify_checks_size_sha256_and_header(tmp_path):
    data = tiny_safetensors()
    f = tmp_path / "x.safetensors"
    f.write_bytes(data)
    import hashlib

    good = M.ModelEntry("x", "r", "p/x.safetensors", "vae", "x.safetensors", size=len(data),
                        sha256=hashlib.sha256(data).hexdigest())
    M.verify(good, f)
    for bad in (M.ModelEntry("x", "r", "p", "vae", "x", size=len(data) + 1),
                M.ModelEntry("x", "r", "p", "vae", "x", sha256="0" * 64)):
        with pytest.raises(M.ModelError):
            M.verify(bad, f)
    f.write_bytes(b"<html>error page</html>")
    with pytest.raises(M.ModelError, match="not a safetensors file"):
        M.verify(M.ModelEntry("x", "r", "p", "vae", "x"), f)


def test_models_list_prints_every_entry():
    r = cli("models", "list")
    assert r.returncode == 0
    assert all(i in r.stdout for i in REQUIRED)


# ------------------------------------------------------------------ the download node

@pytest.mark.host
def test_download_node_is_registered_with_catalog_options(object_info):
    spec = object_info["SpacetimeModelDownload"]["input"]["required"]["model"]
    options = spec[0] if isinstance(spec[0], list) else spec[1]["options"]
    assert set(REQUIRED) <= set(options)


@pytest.mark.host
def test_download_node_outputs_present_file_and_fails_offline_with_names(host, tmp_path):
    present = host.base_dir / "models" / "clip_vision" / "clip_vision_h.safetensors"
    present.parent.mkdir(parents=True, exist_ok=True)
    present.write_bytes(tiny_safetensors())
    try:
        graph = {"1": {"class_type": "SpacetimeModelDownload", "inputs": {"model": "clip-vision-h"}},
                 "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
        status, body = host.client.queue(graph)
        assert status == 200, body
        from spacetime_video.headless.runner import wait_polling

        h = wait_polling(host.client, body["prompt_id"], 60)
        assert h["status"]["status_str"] == "success", h["status"]
        assert "clip_vision_h.safetensors" in json.dumps(h["outputs"]["2"])
    finally:
        present.unlink()
    graph["1"]["inputs"]["model"] = "wan2.2-ti2v-5b"  # not there, and the host is offline
    r = cli("run", str(write(tmp_path / "w.json", graph)), "--server", host.url, "--skip-model-check")
    assert r.returncode == 3, r.stderr
    assert "Comfy-Org/Wan_2.2_ComfyUI_Repackaged" in r.stderr and "wan2.2_ti2v_5B_fp16.safetensors" in r.stderr


def test_models_check_reads_a_ui_workflow_with_subgraphs(tmp_path):
    mod = pytest.importorskip("comfyui_workflow_templates_media_video")
    wf = Path(mod.__file__).parent / "templates" / "03_video_wan2_2_14B_i2v_subgraphed.json"
    r = cli("models", "check", str(wf), "--models-dir", str(tmp_path))
    assert r.returncode == 2
    assert ("spacetime-video models download umt5-xxl-fp8 wan2.1-vae wan2.2-i2v-a14b-high "
            f"wan2.2-i2v-a14b-low --models-dir {tmp_path}") in r.stderr, r.stderr
