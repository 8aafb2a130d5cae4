#!/usr/bin/env bash
# Every tool on each model, one after the other (nothing else running), then the side-by-side comparison.
#   bash experiments/peers/run_all.sh digits_cnn minilm
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${TUNER_PYTHON:-$repo/.venv/bin/python}"
venvs="${PEER_VENVS:-$here/.venvs}"
export OLIVE_DISABLE_TELEMETRY=1
for model in "$@"; do
  work="$here/work/$model"
  [ -f "$work/meta.json" ] || "$python" "$here/prepare.py" "$model"
  "$python" "$here/tuner_front.py" "$model"
  cd "$work"  # (peers write files such as quantized_info.csv into the current folder)
  "$venvs/inc/bin/python" "$here/inc_run.py" "$work" > "$work/inc.log" 2>&1; tail -1 "$work/inc.log"
  "$venvs/olive/bin/python" "$here/olive_run.py" "$work" --samples 20 > "$work/olive.log" 2>&1; tail -1 "$work/olive.log"
  "$venvs/quark/bin/python" "$here/quark_run.py" "$work" > "$work/quark.log" 2>&1; tail -1 "$work/quark.log"
  "$venvs/aimet/bin/python" "$here/aimet_run.py" "$work" > "$work/aimet.log" 2>&1; tail -1 "$work/aimet.log"
  cd "$repo"
  "$python" "$here/compare.py" "$model" --rounds 5 --out "$here/$model.jsonl" | tee "$here/$model.txt"
done
