#!/usr/bin/env bash
# plain (--no-repair) vs shipped int8 vs fp32 latency for the three plain-passing zoo models (docs/int8-fidelity.md,
# "Unconfirmed plain passes"); needs benchmarks/int8_zoo.py --only hym-mnv2,hym-mnv1-0.5-160,hym-mnv2-s3 run first.
# ZOO: int8_zoo.py's --cache (default /tmp/tledge-int8-zoo); PLAIN: where the --no-repair exports go; OUT: the
# bench JSON (defaults under /tmp).
set -u
cd "$(dirname "$0")/.."
H=../shared/assets/hymenoptera_data
Z=${ZOO:-/tmp/tledge-int8-zoo}
PLAIN=${PLAIN:-/tmp/plain}
OUT=${OUT:-/tmp}
mkdir -p "$OUT" "$PLAIN"
for m in hym-mnv2:hym-mnv2-s0 hym-mnv1-0.5-160:hym-mnv1-0.5-160-s0 hym-mnv2-s3:hym-mnv2-s3; do
  name=${m%%:*}; dir=${m##*:}
  if [ ! -f "$PLAIN/$name/model_int8.onnx" ]; then
    .venv/bin/python -m tledge export "$Z/$dir/model.keras" --int8 --calib $H/train --val $H/val --calib-limit 300 \
      --no-repair --out "$PLAIN/$name" -q > "$PLAIN-$name.log" 2>&1
  fi
done
for round in 1 2 3; do
  for m in hym-mnv2 hym-mnv1-0.5-160 hym-mnv2-s3; do
    E=$Z/exports/$m; P=$PLAIN/$m
    .venv/bin/python -m tledge bench --runs 200 --warmup 20 --threads 2 --json -q \
      $P/model_int8.tflite $E/model_int8.tflite $E/model_fp32.tflite $P/model_int8.onnx $E/model_int8.onnx $E/model_fp32.onnx \
      > "$OUT/lat-$m-$round.json" 2> "$OUT/lat-$m-$round.err"
  done
done
.venv/bin/python - "$OUT" <<'PY'  # best p50 of the rounds, and the ratios
import json, sys
names = ("plain int8 tflite", "shipped int8 tflite", "fp32 tflite", "plain int8 onnx", "shipped int8 onnx", "fp32 onnx")
for m in ("hym-mnv2", "hym-mnv1-0.5-160", "hym-mnv2-s3"):
    best = [min(json.load(open(f"{sys.argv[1]}/lat-{m}-{r}.json"))[i]["p50_ms"] for r in (1, 2, 3)) for i in range(6)]
    print(m, dict(zip(names, best)), f"tflite shipped/plain {best[1] / best[0]:.2f}, onnx shipped/plain {best[4] / best[3]:.2f}")
PY
