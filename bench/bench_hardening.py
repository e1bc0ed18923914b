"""Benchmark (not a test): a real ComfyUI host under a stream of mixed valid and hostile jobs.

One server on loopback with this checkout, a secret in an allowed key variable and a fake
OpenAI-compatible server that echoes the ``Authorization`` header back in every answer. Then:

* ``--jobs`` jobs one after another through ``POST /prompt``, every second one hostile (NaN,
  wrong JSON types, unknown choices, NUL and surrogate text, paths out of the folders, a
  disallowed key variable or host, a canvas too big for memory, a missing input). Reported:
  how each hostile job was refused and whether the error names the node and the input; the
  server's RSS after each job and its growth from job 10 to the last; files that appeared
  outside ComfyUI's output folder; whether the secret appears in any output file, the
  history, the prompt cache or the server log.
* Interrupt latency: ``POST /interrupt`` while the prompt expander waits on a server that never
  answers, and while a model download waits on a hub that never answers (``HF_ENDPOINT``
  pointed at it); the time until the queue is idle again. Then one more valid job.

Run (from the repository root, in the project's environment, after ``make setup``):

    python bench/bench_hardening.py --jobs 50 --interrupts 5

Results with date, machine and command: bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import socket
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
from checkout import import_checkout

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------- fake servers

class EchoLLM(BaseHTTPRequestHandler):
    """Answers every chat completion with a caption that repeats the Authorization header."""
    keyed = 0  # requests that carried a key

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        auth = self.headers.get("Authorization", "")
        if auth:
            EchoLLM.keyed += 1
        seed = json.loads(raw).get("seed")
        content = f"Header {auth} says hello. A red circle moves left across a navy background, seed {seed}."
        body = json.dumps({"id": "x", "object": "chat.completion", "model": "echo",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                        "finish_reason": "stop"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class HungServer:
    """Accepts connections and reads from them, never answers; counts connections."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            self.connections += 1

    def wait_for(self, count: int, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.connections >= count:
                return True
            time.sleep(0.01)
        return False


# ------------------------------------------------------------------------------- jobs

def valid_graph(echo_url: str, seed: int) -> dict:
    graph = json.loads((ROOT / "workflows" / "api" / "embedded_t2v_api.json").read_text())
    graph["2"]["inputs"].update(backend="openai-compatible", base_url=echo_url, model="echo",
                                api_key_env="BENCH_API_KEY", on_error="raise", model_family="wan2.1",
                                seed=seed, prompt="red circle left")
    graph["5"]["inputs"].update(length=5)
    graph["6"]["inputs"].update(seed=seed, steps=2, solver="euler")
    graph["8"]["inputs"]["filename_prefix"] = "bench/ok"
    return graph


def hostile_jobs(root: Path) -> list[tuple[str, str, str, callable]]:
    """(label, node type, input, change to a valid graph)."""
    def setting(node, name, value):
        def change(g):
            g[node]["inputs"][name] = value
        return change

    def load_video(g):
        g["9"] = {"class_type": "SpacetimeLoadVideo", "inputs": {"video": "../../../etc/passwd", "start_frame": 0,
                                                                 "frame_count": 5, "stride": 1, "width": 64,
                                                                 "height": 64}}
        g["8"]["inputs"]["images"] = ["9", 0]

    def no_seed(g):
        del g["6"]["inputs"]["seed"]

    def huge(g):
        g["5"]["inputs"].update(width=8192, height=8192, length=1025)

    return [
        ("cfg NaN", "SpacetimeSampler", "cfg", setting("6", "cfg", math.nan)),
        ("shift inf", "SpacetimeSampler", "shift", setting("6", "shift", math.inf)),
        ("width as text", "SpacetimeCanvas", "width", setting("5", "width", "abc")),
        ("steps as a list", "SpacetimeSampler", "steps", setting("6", "steps", [1, 2, 3])),
        ("unknown solver", "SpacetimeSampler", "solver", setting("6", "solver", "not-a-solver")),
        ("prefix ../", "SpacetimeSaveVideo", "filename_prefix",
         setting("8", "filename_prefix", "../../../escape/x")),
        ("absolute prefix", "SpacetimeSaveVideo", "filename_prefix",
         setting("8", "filename_prefix", str(root / "absolute" / "x"))),
        ("NUL in prompt", "SpacetimePromptExpander", "prompt", setting("2", "prompt", "red\x00ball")),
        ("lone surrogate", "SpacetimePromptExpander", "prompt", setting("2", "prompt", "red \ud800 ball")),
        ("200k-character prompt", "SpacetimePromptExpander", "prompt", setting("2", "prompt", "x" * 200_001)),
        ("key variable HOME", "SpacetimePromptExpander", "api_key_env", setting("2", "api_key_env", "HOME")),
        ("key to a foreign host", "SpacetimePromptExpander", "base_url",
         setting("2", "base_url", "http://api.example.invalid/v1")),
        ("user info in URL", "SpacetimePromptExpander", "base_url",
         setting("2", "base_url", "http://user:pw@127.0.0.1:9/v1")),
        ("video ../../etc/passwd", "SpacetimeLoadVideo", "video", load_video),
        ("canvas 8192x8192x1025", "SpacetimeCanvas", "allow_large", huge),
        ("missing seed", "SpacetimeSampler", "seed", no_seed),
        ("fps NaN", "SpacetimeSaveVideo", "fps", setting("8", "fps", math.nan)),
        ("unknown format", "SpacetimeSaveVideo", "format", setting("8", "format", "exe")),
    ]


def wait_done(client, prompt_id: str, timeout: float = 300.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        entry = client.history(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            return entry
        time.sleep(0.05)
    raise TimeoutError(f"job {prompt_id} not finished after {timeout} s")


def names_node_and_input(status: str, text: str, node_type: str, name: str) -> bool:
    """A refusal (HTTP 400 body) or a node error that names the node and the input itself."""
    if status == "refused":
        body = json.loads(text)
        # ComfyUI files a custom validator's message under every input: it must name the input itself
        return any(node.get("class_type") == node_type and any(
            f"input '{name}'" in e.get("details", "") if e.get("type") == "custom_validation_failed"
            else (e.get("extra_info") or {}).get("input_name") == name for e in node.get("errors", []))
            for node in (body.get("node_errors") or {}).values())
    return any(m.startswith(node_type) and name in m for m in text.split("\n"))


def run_job(client, graph: dict) -> tuple[str, str]:
    """('refused', the 400 body) for a refusal, else (status_str, the error messages one per line)."""
    status, body = client.queue(graph)
    if status != 200 or body.get("node_errors"):
        return "refused", json.dumps(body, ensure_ascii=False)
    entry = wait_done(client, body["prompt_id"])
    errors = [str(data.get("exception_message", "")).strip().replace("\n", " ")
              for kind, data in entry["status"].get("messages", []) if kind == "execution_error"]
    return entry["status"]["status_str"], "\n".join(errors)


def wait_idle(client, timeout: float = 30.0) -> float:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        q = client.get_json("/queue")
        if not q["queue_running"] and not q["queue_pending"]:
            return time.monotonic()
        time.sleep(0.005)
    raise TimeoutError("the queue did not become idle")


def interrupt_latency(client, graph: dict, hung: HungServer) -> float:
    before = hung.connections
    status, body = client.queue(graph)
    assert status == 200 and not body.get("node_errors"), body
    if not hung.wait_for(before + 1, 120):
        raise RuntimeError("the job never reached the hung server")
    time.sleep(0.2)  # well inside the wait
    t0 = time.monotonic()
    client.interrupt()
    return wait_idle(client) - t0


def snapshot(root: Path, skip: list[Path]) -> set[str]:
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        found.update(str(here / f) for f in filenames if here / f not in skip)
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--interrupts", type=int, default=5, help="repeats of each interrupt measurement")
    ap.add_argument("--comfyui", default=None, help="ComfyUI folder (default: $SPACETIME_COMFYUI or .host/ComfyUI)")
    args = ap.parse_args(argv)
    import_checkout()
    from spacetime_video.headless.host import ComfyHost

    secret = "sk-bench-" + secrets.token_hex(20)
    echo = ThreadingHTTPServer(("127.0.0.1", 0), EchoLLM)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    echo_url = f"http://127.0.0.1:{echo.server_address[1]}/v1"
    hung = HungServer()

    with tempfile.TemporaryDirectory(prefix="spacetime-hardening-") as tmp:
        root = Path(tmp)
        base = root / "a" / "b" / "base"   # so that ../../ still lands where we look
        cache, hub = root / "prompt-cache", root / "hub"
        env = {"BENCH_API_KEY": secret, "SPACETIME_PROMPT_CACHE": str(cache), "HF_HUB_OFFLINE": "0",
               "HF_ENDPOINT": f"http://127.0.0.1:{hung.port}", "HF_HUB_CACHE": str(hub),
               "SPACETIME_API_KEY_VARS": "", "SPACETIME_API_KEY_HOSTS": ""}
        with ComfyHost(base, comfy_dir=args.comfyui or os.environ.get("SPACETIME_COMFYUI")
                       or ROOT / ".host" / "ComfyUI", env=env) as host:
            client, server = host.client, psutil.Process(host.proc.pid)
            expected_places = [base / "output", base / "temp", base / "user", cache, host.log_path]
            before = snapshot(root, expected_places)

            hostile = hostile_jobs(root)
            rss, outcomes, unclear = [], [], []
            t_start = time.monotonic()
            for i in range(args.jobs):
                if i % 2 == 0:
                    status, text = run_job(client, valid_graph(echo_url, seed=i))
                    outcomes.append(("valid", status))
                    if status != "success":
                        unclear.append(f"job {i + 1} (valid) did not succeed: {text[:300]}")
                else:
                    label, node_type, name, change = hostile[(i // 2) % len(hostile)]
                    graph = valid_graph(echo_url, seed=i)
                    change(graph)
                    status, text = run_job(client, graph)
                    outcomes.append((label, status))
                    if status == "success" or not names_node_and_input(status, text, node_type, name):
                        unclear.append(f"job {i + 1} ({label}): {status}: {text[:300]}")
                rss.append(server.memory_info().rss)
            jobs_s = time.monotonic() - t_start
            after = snapshot(root, expected_places)

            history = json.dumps(client.get_json("/history"), ensure_ascii=False)
            latency = {"hung LLM": [], "hung download": []}
            hung_llm = valid_graph(f"http://127.0.0.1:{hung.port}/v1", seed=10_000)
            hung_llm["2"]["inputs"]["api_key_env"] = ""
            download = valid_graph(echo_url, seed=20_000)
            download["40"] = {"class_type": "SpacetimeModelDownload", "inputs": {"model": "wan2.1-vae"}}
            download["8"]["inputs"]["caption"] = ["40", 0]
            for k in range(args.interrupts):
                hung_llm["2"]["inputs"]["seed"] = 10_000 + k  # not a cached answer
                latency["hung LLM"].append(interrupt_latency(client, hung_llm, hung))
                download["6"]["inputs"]["seed"] = 20_000 + k
                latency["hung download"].append(interrupt_latency(client, download, hung))
            final, final_text = run_job(client, valid_graph(echo_url, seed=99_999))

            leaked = [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
            if secret in history:
                leaked.append("GET /history")
            alive = client.alive()

    n_valid = sum(1 for kind, _ in outcomes if kind == "valid")
    print(f"jobs: {len(outcomes)} ({n_valid} valid, {len(outcomes) - n_valid} hostile) in {jobs_s:.1f} s; "
          f"server alive: {alive}")
    for label, status in outcomes:
        if label != "valid":
            print(f"  {label:26s} {status}")
    print(f"valid jobs that succeeded: {sum(1 for k, s in outcomes if k == 'valid' and s == 'success')}/{n_valid}")
    print(f"hostile jobs refused with the node and the input named: "
          f"{len(outcomes) - n_valid - sum(1 for u in unclear if '(valid)' not in u)}/{len(outcomes) - n_valid}")
    for line in unclear:
        print("  UNCLEAR:", line)
    if len(rss) >= 10:
        growth = (rss[-1] - rss[9]) / rss[9] * 100
        print(f"server RSS: job 1 {rss[0] / 2**20:.0f} MiB, job 10 {rss[9] / 2**20:.0f} MiB, job {len(rss)} "
              f"{rss[-1] / 2**20:.0f} MiB, growth job 10 -> {len(rss)}: {growth:+.2f}%")
    print(f"keyed requests the echo server answered (each echoed the key): {EchoLLM.keyed}")
    new = sorted(after - before)
    print(f"files that appeared outside output/, temp/, user/ and the prompt cache: {len(new)}")
    for path in new:
        print("  ", os.path.relpath(path, root))
    print(f"places holding the secret (every file under the temporary root, /history): {len(leaked)}")
    for place in leaked:
        print("  ", place)
    for what, values in latency.items():
        print(f"interrupt -> idle, {what}: " + ", ".join(f"{v:.3f}" for v in values)
              + f" s (max {max(values):.3f} s)")
    print(f"valid job after the interrupts: {final}" + ("" if final == "success" else f" {final_text[:300]}"))
    ok = (not unclear and not new and not leaked and alive and final == "success"
          and all(max(v) <= 1.0 for v in latency.values()))
    print("ALL TARGETS MET" if ok else "SOME TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
