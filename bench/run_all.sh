#!/usr/bin/env bash
# Every benchmark of BENCHMARKS.md in one go. Each script's JSON report goes to bench/results/
# (committed: README.md and BENCHMARKS.md render their tables from it with
# `python -m bench.render_docs`), its log to .cache/bench/logs/. About 9 hours on a 2-core CPU
# (accuracy: 2 settings x 3 seeds x 4 variants); --quick takes about 2 hours and writes to
# .cache/bench/quick/ instead, so quick numbers never replace the committed ones. --levers adds
# the failure-mode levers of BENCHMARKS.md sections 1 and 1c to 1f (variants, transfer between
# the settings, the longer schedules): about 33 hours more on a 2-core CPU.
#   make setup && .venv/bin/pip install -r bench/requirements.txt && bench/run_all.sh [--quick] [--levers]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=(.venv/bin/python -W ignore -m)
OUT=bench/results
LOGS=.cache/bench/logs
QUICK=""
SCORER_ARGS=(--tiles 200 2000 --solaris-tiles 2000 --repeats 5)
SCENE=10000
ITERS=600
IMAGES=60
LEVERS=0
for arg in "$@"; do
  case "$arg" in
    --quick)
      QUICK="--quick"
      OUT=.cache/bench/quick
      SCORER_ARGS=(--tiles 200 500 --solaris-tiles 500 --repeats 3)
      SCENE=3000
      ITERS=200
      IMAGES=20
      ;;
    --levers) LEVERS=1 ;;
    *)
      echo "usage: bench/run_all.sh [--quick] [--levers]" >&2
      exit 2
      ;;
  esac
done
mkdir -p "$OUT" "$LOGS"
run() {  # run NAME CMD...: stdout (the JSON report) to $OUT/NAME.json, stderr to $LOGS/NAME.log
  local name=$1
  shift
  echo "== $name: $*" >&2
  local start=$SECONDS
  if ! "$@" > "$OUT/$name.json.tmp" 2> "$LOGS/$name.log"; then
    echo "$name failed; see $LOGS/$name.log" >&2
    exit 1
  fi
  mv "$OUT/$name.json.tmp" "$OUT/$name.json"
  echo "$name: $((SECONDS - start)) s" >&2
}
# Both data settings, three model seeds: MNC as the original trains it (box-level classifiers
# off), Mask R-CNN, the mnc_d2 0.1 head, warping without the box gradient and the cascade with
# a convolutional mask head.
for setting in default hard; do
  run accuracy_$setting "${PY[@]}" bench.bench_accuracy $QUICK --setting $setting \
    --model-seeds 0 1 2 --variants mnc5 mask_rcnn mnc5_v01 mnc5_no_box_grad mnc5_conv_mask
done
# The shapes of the buildings both MNC and Mask R-CNN found, seed by seed (from the evaluations
# the reports above wrote; before anything evaluates those models again with --test-opts).
for setting in default hard; do
  suffix=$([[ $setting == default ]] && echo "" || echo "_$setting")
  report=".cache/bench/accuracy/report_${IMAGES}img_${ITERS}it${suffix}.json"
  run paired_shape_$setting "${PY[@]}" bench.bench_paired_shape --pair mnc5 mask_rcnn \
    --report "$report"
  # at each model's best threshold (calibration aside), and with the rectilinear option's
  # polygons (regularised, 2 px min edge)
  run paired_shape_${setting}_best "${PY[@]}" bench.bench_paired_shape --pair mnc5 mask_rcnn \
    --report "$report" --thresholds best
  run paired_shape_${setting}_rectilinear "${PY[@]}" bench.bench_paired_shape --pair mnc5 \
    mask_rcnn --report "$report" --regularize 2
  # the cascade with a convolutional mask head against Mask R-CNN, and against the fc head
  run paired_shape_${setting}_conv "${PY[@]}" bench.bench_paired_shape --pair mnc5_conv_mask \
    mask_rcnn --report "$report"
  run paired_shape_${setting}_conv_vs_fc "${PY[@]}" bench.bench_paired_shape --pair \
    mnc5_conv_mask mnc5 --report "$report"
done
# One-change ablations of the head on a short schedule (JSON lines).
"${PY[@]}" bench.diagnose_scores > "$OUT/diagnose.jsonl.tmp" 2> "$LOGS/diagnose.log"
mv "$OUT/diagnose.jsonl.tmp" "$OUT/diagnose.jsonl"
run speed "${PY[@]}" bench.bench_speed $QUICK
run speed_r50 "${PY[@]}" bench.bench_speed $QUICK --variants mask_rcnn_R50 mnc5_R50 mnc5_R50_nopool \
  --steps 4 --tiles 5
run speed_releases "${PY[@]}" bench.bench_speed $QUICK --variants mnc5_R50 mnc5_R50_sn1 \
  mnc5_R50_sn4 --steps 4 --tiles 5 --rounds 2 --work .cache/bench/speed_releases
# The R-50 recipe's mask head at 256 and 128 channels, and with 200 test proposals, against
# Mask R-CNN with the recipe's levers: random weights, 30 instances kept per tile (section 2).
run speed_r50_recipe "${PY[@]}" bench.bench_speed $QUICK --variants mask_rcnn_R50_recipe \
  mnc5_R50_recipe mnc5_R50_recipe_mask128 mnc5_R50_recipe_mask128_topk200 mnc5_R50_recipe_fc \
  --steps 3 --tiles 5 --rounds 2 --warmup 1 --detections 30
run export_r50_recipe "${PY[@]}" bench.bench_export_r50
run scorer "${PY[@]}" bench.bench_scorer "${SCORER_ARGS[@]}"
# The golden cases of the tester-rules tests through the Java tester (exit 1 on a disagreement).
run tester_golden "${PY[@]}" bench.check_tester_golden
run predict "${PY[@]}" bench.bench_predict --size "$SCENE" \
  --run ".cache/bench/accuracy/runs/mnc5_${IMAGES}img_${ITERS}it/seed0"
run predict_many "${PY[@]}" bench.bench_predict_many \
  --run ".cache/bench/accuracy/runs/mnc5_${IMAGES}img_${ITERS}it/seed0"
# Scenes cut into tiles and merged back; scenes smaller than a tile (section 11), section 1's
# mnc5 models of both settings (nothing retrained).
for setting in default hard; do
  runs=".cache/bench/accuracy/runs/mnc5_${IMAGES}img_${ITERS}it$([ $setting = hard ] && echo _hard)"
  run seams_${setting} "${PY[@]}" bench.bench_seams --setting $setting \
    --runs "$runs/seed0" "$runs/seed1" "$runs/seed2"
  run input_scale_${setting} "${PY[@]}" bench.bench_input_scale --setting $setting \
    --runs "$runs/seed0" "$runs/seed1" "$runs/seed2"
done
# Exported models (onnxruntime, OpenVINO, TorchScript) against eager on section 1's MNC models.
run export "${PY[@]}" bench.bench_export $QUICK --tag "${IMAGES}img_${ITERS}it"
# Section 1's default-setting MNC / Mask R-CNN pair at its 416 px input, one thread per model
# and two, each onnxruntime session as predict.py opens it against one with every optimiser on,
# and with one thread the MNC's export against its level-by-level export (section 8k; the
# reports of sections 8i, export_pair_demo_threads1/2, and 8j, export_pair_demo_warps_threads1/2,
# timed the graphs of earlier versions), then the profiles of seed 1.
for t in 1 2; do
  parts=(paired optimisers)
  if [ "$t" = 1 ]; then parts+=(warps); fi
  run export_pair_demo_heads_threads$t "${PY[@]}" bench.bench_export_pair --mnc mnc5 \
    --mask-rcnn mask_rcnn --tag "${IMAGES}img_${ITERS}it" --train-setting default --threads $t \
    --test-images $((IMAGES / 2)) --parts "${parts[@]}"
done
run export_stages_heads_threads1 "${PY[@]}" bench.bench_export $QUICK --speed-seed 1 \
  --settings default --seeds 1 --threads 1 --parts flops stage_time
# The same MNC models' exports scored on test tiles drawn with generator seeds that no run was
# trained, calibrated or tuned on, both settings (section 8l): seed 2 as many tiles as the
# benchmark, seed 3 twice as many.
for ts in 2 3; do
  run export_pair_demo_unseen_seed$ts "${PY[@]}" bench.bench_export_pair --mnc mnc5 \
    --mask-rcnn mask_rcnn --tag "${IMAGES}img_${ITERS}it" --train-setting default \
    --test-settings default hard --test-seed $ts \
    --test-images $(( ts == 2 ? IMAGES / 2 : IMAGES )) --parts accuracy
done
# The MNC exported with the RoIAlign form of the warps (tools/export_model.py --warp-layout
# roialign) against this version's export and against Mask R-CNN, one thread (section 8m).
run export_pair_demo_roialign_threads1 "${PY[@]}" bench.bench_export_pair --mnc mnc5 \
  --mask-rcnn mask_rcnn --tag "${IMAGES}img_${ITERS}it" --train-setting default --threads 1 \
  --test-images $((IMAGES / 2)) --parts paired roialign \
  --backends onnxruntime openvino onnxruntime-int8 openvino-int8
# OpenVINO's own graphs in the export folder (tools/export_model.py --formats
# onnx,onnx-int8,onnx-openvino,onnx-int8-openvino) scored through predict.py on section 8l's
# unseen tiles, and the RoIAlign form against this version's with two threads and at 650 px
# (section 8n).
for ts in 2 3; do
  run export_pair_demo_openvino_graphs_seed$ts "${PY[@]}" bench.bench_export_pair --mnc mnc5 \
    --mask-rcnn mask_rcnn --tag "${IMAGES}img_${ITERS}it" --train-setting default \
    --test-settings default hard --test-seed $ts \
    --test-images $(( ts == 2 ? IMAGES / 2 : IMAGES )) --parts accuracy \
    --backends openvino openvino-int8 --openvino-warps roialign
done
run export_pair_demo_roialign_threads2 "${PY[@]}" bench.bench_export_pair --mnc mnc5 \
  --mask-rcnn mask_rcnn --tag "${IMAGES}img_${ITERS}it" --train-setting default --threads 2 \
  --test-images $((IMAGES / 2)) --parts paired roialign \
  --backends onnxruntime openvino onnxruntime-int8 openvino-int8
# ... and with one thread at the tiles' native 650 px (both models, an inference-only override)
run export_pair_demo_roialign_650px_threads1 "${PY[@]}" bench.bench_export_pair --mnc mnc5 \
  --mask-rcnn mask_rcnn --tag "${IMAGES}img_${ITERS}it" --train-setting default --threads 1 \
  --test-images $((IMAGES / 2)) --input-px 650 --parts paired roialign \
  --backends onnxruntime openvino onnxruntime-int8 openvino-int8
# The R-50 config's whole scene, from the export bench's random-init R-50 model and its INT8 graph.
run predict_r50 "${PY[@]}" bench.bench_predict --size 3000 --run .cache/bench/export/r50 \
  --model .cache/bench/export/int8/speed_r50 --backends torch onnxruntime onnxruntime-int8 \
  --repeats 3 --label "R-50-FPN MNC (SpaceNet 2 config, 650 px), random init"
# The cascade shortcut on section 1's MNC models (inference only, nothing retrained).
for setting in default hard; do
  run accuracy_${setting}_cascade "${PY[@]}" bench.bench_accuracy $QUICK --setting $setting \
    --model-seeds 0 1 2 --variants mnc5 --test-opts MODEL.MNC.TEST_CASCADE_MIN_SCORE 0.05
done
# The other two shortcuts' values chosen on training tiles, then the NMS one on the benchmark,
# beside the same models without it (section 8c).
for shortcut in topk nms; do
  run cascade_shortcut_$shortcut "${PY[@]}" bench.select_cascade_shortcut --shortcut $shortcut \
    --variants mnc5 --settings default hard --model-seeds 0 1 2 --iters "$ITERS" \
    --images "$IMAGES"
done
for setting in default hard; do
  for v in 000:0.0 080:0.8; do
    run accuracy_${setting}_cascade_nms${v%:*} "${PY[@]}" bench.bench_accuracy $QUICK \
      --setting $setting --model-seeds 0 1 2 --variants mnc5 \
      --test-opts MODEL.MNC.TEST_CASCADE_NMS ${v#*:}
  done
done
# Test-time augmentation on both settings' MNC models (416 px input), each scored on both
# benchmarks without it and with two pass sets (section 1i; inference only, nothing retrained).
for tta in "off:TEST.AUG.ENABLED False" \
    "d4:TEST.AUG.ENABLED True TEST.AUG.MIN_SIZES () TEST.AUG.FLIP True TEST.AUG.ROT90 True" \
    "scales:TEST.AUG.ENABLED True TEST.AUG.MIN_SIZES (416,555) TEST.AUG.FLIP False"; do
  name=accuracy_default_tta_${tta%%:*}
  run $name "${PY[@]}" bench.bench_accuracy $QUICK --setting default --model-seeds 0 1 2 \
    --variants mnc5 --test-opts ${tta#*:}
  run ${name}_scored_hard "${PY[@]}" bench.bench_accuracy $QUICK --setting default \
    --test-setting hard --model-seeds 0 1 2 --variants mnc5 --test-opts ${tta#*:}
  # the second data setting: hard's MNC models, on hard's benchmark and on default's
  name=accuracy_hard_tta_${tta%%:*}
  run $name "${PY[@]}" bench.bench_accuracy $QUICK --setting hard --model-seeds 0 1 2 \
    --variants mnc5 --test-opts ${tta#*:}
  run ${name}_scored_default "${PY[@]}" bench.bench_accuracy $QUICK --setting hard \
    --test-setting default --model-seeds 0 1 2 --variants mnc5 --test-opts ${tta#*:}
done
# What each pass set costs per tile (section 1i's timing), on the `make demo` model.
[[ -f output/demo/model_final.pth ]] || .venv/bin/python tools/demo.py > "$LOGS/demo.log" 2>&1
run tta_time_demo "${PY[@]}" bench.bench_tta --run output/demo \
  --tiles 'datasets/synthetic/spacenet/*/RGB-PanSharpen/*.tif' --count 10 --rounds 3 \
  --label "the make demo model (R-18-FPN MNC, 1,000 iterations, trained on this machine)"
if [[ $LEVERS == 1 ]]; then
  # Each bench_accuracy invocation adds its runs to the report of its schedule and settings
  # (.cache/bench/accuracy/report_*.json), so a report name recurs with other variants.
  acc() {  # acc REPORT ARGS...: one bench_accuracy invocation, three model seeds
    local name=$1
    shift
    run "$name" "${PY[@]}" bench.bench_accuracy $QUICK --model-seeds 0 1 2 "$@"
  }
  eightband_levers=(mnc5_8band_native_small_anchors mask_rcnn_8band_native_small_anchors
                    mnc5_8band_native_small_anchors_nirdrop mnc5_8band_native_small_anchors_roofgain)
  # Section 1: the levers alone and together, both settings, and each scored on the other setting.
  acc accuracy_default --setting default --variants mnc5_8band mnc5_photometric mnc5_native \
    mnc5_small_anchors
  acc accuracy_hard --setting hard --variants mnc5_8band mnc5_photometric mnc5_native \
    mnc5_small_anchors
  for setting in default hard; do
    other=$([[ $setting == default ]] && echo hard || echo default)
    acc accuracy_$setting --setting $setting --variants "${eightband_levers[@]}"
    acc accuracy_${setting}_on_$other --setting $setting --test-setting $other \
      --variants mnc5 mnc5_8band_native_small_anchors mnc5_8band_native_small_anchors_nirdrop \
      mnc5_8band_native_small_anchors_roofgain
  done
  acc accuracy_default_on_hard --setting default --test-setting hard --variants mnc5_photometric
  # the three levers with the convolutional mask head, both settings, at the configs' learning
  # rate and at half of it
  for setting in default hard; do
    acc accuracy_$setting --setting $setting --variants mnc5_8band_native_small_anchors_conv_mask
    acc accuracy_$setting --setting $setting \
      --variants mnc5_8band_native_small_anchors_conv_mask_lr005
  done
  acc accuracy_default_on_hard --setting default --test-setting hard \
    --variants mnc5_8band_native_small_anchors_conv_mask_lr005
  acc accuracy_hard_on_default --setting hard --test-setting default \
    --variants mnc5_8band_native_small_anchors_conv_mask_lr005
  # why that head's classifier stayed at the class prior on some seeds: its fc units, alive or
  # dead (the model without the joint fc trained for one seed first, to the cache only)
  "${PY[@]}" bench.bench_accuracy $QUICK --setting default --model-seeds 0 \
    --variants mnc5_8band_native_small_anchors_conv_mask_concat > /dev/null
  run diagnose_units "${PY[@]}" bench.diagnose_units --settings default hard --model-seeds 0 1 2 \
    --variants mnc5_8band_native_small_anchors_conv_mask \
    mnc5_8band_native_small_anchors_conv_mask_lr005
  run diagnose_units "${PY[@]}" bench.diagnose_units --settings default --model-seeds 0 \
    --variants mnc5_8band_native_small_anchors_conv_mask_concat \
    --add-to "$OUT/diagnose_units.json"
  longer() {  # longer SETTING OTHER MULT VARIANT...: MULT x the schedule, scored on both settings
    local setting=$1 other=$2 iters=$((ITERS * $3))
    shift 3
    acc accuracy_${setting}_${iters}it --setting "$setting" --iters $iters --variants "$@"
    acc accuracy_${setting}_${iters}it_on_$other --setting "$setting" --iters $iters \
      --test-setting "$other" --variants "$@"
  }
  # Section 1d: longer schedules on hard (2x and 4x); section 1f's RGB model with roof
  # recolouring on hard at 4x.
  longer hard default 2 mnc5_8band_native_small_anchors
  longer hard default 4 mnc5_8band_native_small_anchors mnc5_native_small_anchors \
    mnc5_native_small_anchors_roofgain
  # Section 1e: the RGB two levers trained on default (Mask R-CNN the same way at 2x), and
  # section 1f's RGB model with roof recolouring (2x and 4x).
  longer default hard 2 mnc5_native_small_anchors mask_rcnn_native_small_anchors \
    mnc5_native_small_anchors_roofgain
  longer default hard 4 mnc5_native_small_anchors mnc5_native_small_anchors_roofgain
  # The recipe the README recommends (log input, copy-paste, the convolutional mask head) and
  # Mask R-CNN trained the same way, 4x on hard, with the recipe's mask head half as wide
  # (section 8f); then each MNC exported and timed as a pair with that Mask R-CNN (section 8e).
  longer hard default 4 mnc5_native_small_anchors_logdn_copypaste_conv_mask \
    mask_rcnn_native_small_anchors_logdn_copypaste \
    mnc5_native_small_anchors_logdn_copypaste_conv_mask32
  run export_pair_recipe "${PY[@]}" bench.bench_export_pair --tag "${IMAGES}img_$((ITERS * 4))it"
  # the same recipe with a mask head half as wide, against the same Mask R-CNN (section 8f)
  run export_pair_recipe_mask32 "${PY[@]}" bench.bench_export_pair \
    --tag "${IMAGES}img_$((ITERS * 4))it" \
    --mnc mnc5_native_small_anchors_logdn_copypaste_conv_mask32
  # the same pair with one thread per model, and many scenes through seed 1's int8 graph on
  # one two-thread process against two one-thread Ray actors (section 8i)
  run export_pair_recipe_mask32_threads1 "${PY[@]}" bench.bench_export_pair \
    --tag "${IMAGES}img_$((ITERS * 4))it" --threads 1 --parts paired \
    --mnc mnc5_native_small_anchors_logdn_copypaste_conv_mask32
  int8_model=".cache/bench/export_pair/mnc5_native_small_anchors_logdn_copypaste_conv_mask32_${IMAGES}img_$((ITERS * 4))it_seed1"
  run predict_many_onnxruntime_int8 "${PY[@]}" bench.bench_predict_many \
    --backend onnxruntime-int8 --model "$int8_model" --scenes 160
  run predict_many_onnxruntime_int8_640 "${PY[@]}" bench.bench_predict_many \
    --backend onnxruntime-int8 --model "$int8_model" --scenes 640
fi
echo "reports in $OUT/; render the docs' tables with: .venv/bin/python -m bench.render_docs" >&2
