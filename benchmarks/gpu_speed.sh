#!/bin/bash
# The quantizers' GPU step speed before and after a change, side by side in one GPU session:
# the step benchmarks and a short real training run, once with OLD (a copy of the previous
# commit's src/, e.g. `git archive HEAD src | tar -x -C gpu_old`) and once with this tree.
#   bash benchmarks/gpu_speed.sh gpu_old/src OUT_DIR     (on the GPU machine)
# Each piece has a hard time limit, so the whole script stays inside one short device lease.
old=$1; out=$2; runs=$(mktemp -d); mkdir -p "$out"
export PYTHONUNBUFFERED=1
row=experiments/gdrq/gdrq_w2a4_learnclip_20ep_resnet20_cifar10.yaml
for tag in new old; do
  src=$PWD/src; [ $tag = old ] && src=$PWD/$old
  PYTHONPATH=$src timeout 60 python3 benchmarks/bench_qat_step.py --device cuda --steps 10 \
    --repeats 3 --name qat_step_gpu_$tag --out-dir "$out" > "$out/qat_$tag.log" 2>&1
  PYTHONPATH=$src timeout 60 python3 benchmarks/bench_groupnet_step.py --device cuda --steps 5 \
    --repeats 3 --name groupnet_step_gpu_$tag --out-dir "$out" > "$out/groupnet_$tag.log" 2>&1
  PYTHONPATH=$src timeout 30 python3 -m lowbit.cli reproduce $row --set train.device=cuda \
    --set data.name=folder:gpu_data/cifar10_sub --set train.progress=false \
    --run-dir $runs/trainer_$tag > "$out/trainer_$tag.log" 2>&1
done
tail -n 30 "$out"/*.log
