#!/usr/bin/env bash
# One virtual environment per peer under experiments/peers/.venvs/ (none of them is a dependency of tuner), pinned
# to the versions the tables were measured with. Each gets the CPU build of torch first where the peer pulls torch.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venvs="$here/.venvs"
mkdir -p "$venvs"
make() {  # name, packages...
  local name=$1; shift
  [ -x "$venvs/$name/bin/python" ] || python3 -m venv "$venvs/$name"
  "$venvs/$name/bin/pip" install -q "$@"
}
# Neural Compressor imports prettytable and scipy without declaring them
make inc onnx-neural-compressor==1.0 onnxruntime==1.32.0 prettytable scipy
# Olive 0.13 needs requests (telemetry) without declaring it; pydantic 2.11 as measured
make olive torch==2.13.0 && make olive olive-ai==0.13.0 onnxruntime==1.32.0 requests "pydantic==2.11.*"
make quark torch==2.13.0 && make quark amd-quark==0.13 onnxruntime==1.32.0
make aimet torch==2.13.0 && make aimet aimet-onnx==2.42.0
