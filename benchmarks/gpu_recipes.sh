#!/bin/bash
# Every recipe kind end to end on DEVICE (cuda), briefly, on the CIFAR-10 subset of
# gpu_check.py: INQ (partition steps, and DNS pruning first), LBW (ternary and threshold), plain
# QAT and float training, each for a few short epochs, all at once. Results, logs and checkpoints
# go to OUT/recipes.tar.gz; `python benchmarks/gpu_check.py compare` evaluates them on a CPU.
#   bash benchmarks/gpu_recipes.sh cuda OUT_DIR
device=$1; out=$2; g=$(mktemp -d); mkdir -p "$out" $g/logs $g/results $g/checkpoints
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
run() {  # name, experiment, budget overrides...
  local name=$1 exp=$2; shift 2
  timeout 100 "${PYTHON:-python3}" -m lowbit.cli reproduce "$exp" --record --run-dir $g/runs/$name \
    --results-dir $g/results --checkpoints-dir $g/checkpoints --set train.device="$device" \
    --set train.progress=false --set train.threads=2 --set data.name=folder:gpu_data/cifar10_sub \
    "$@" > $g/logs/$name.log 2>&1
}
run inq_w5 experiments/inq/inq_w5_12ep_resnet20_cifar10.yaml --set quant.epochs_per_step=1 &
run inq_w5_pruned experiments/inq/inq_w5_pruned50_resnet20_cifar10.yaml \
  --set quant.epochs_per_step=1 --set quant.prune_epochs=1 &
run lbw_w2 experiments/lbw/lbw_w2_resnet20_cifar10.yaml --set train.epochs=3 &
run lbw_w4 experiments/lbw/lbw_w4_resnet20_cifar10.yaml --set train.epochs=3 &
run qat_w2a4 experiments/qat/qat_w2a4_uniform_resnet20_cifar10.yaml --set train.epochs=3 &
run float experiments/baseline/resnet20_cifar10_float.yaml --set train.epochs=2 &
wait
tar czf "$out/recipes.tar.gz" -C $g results checkpoints logs
tail -n 1 $g/logs/*.log
