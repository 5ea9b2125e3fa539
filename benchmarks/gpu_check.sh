#!/usr/bin/env bash
# CUDA check in one call: the training CLI (bf16, fp16 with a grad scaler, resume, torchrun),
# the throughput benchmark and a profile of its steps, the test suite with CUDA visible, and a
# short demo.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh              # everything, on a machine with a CUDA GPU
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh tests bench  # some sections: train bench profile compile tests demo
#
# Uses the machine's python3 and the repo's src/ (no install) and pytest-xdist for the suite; logs go to $OUT.
set -u
OUT=${OUT:-/tmp/gpu_check}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
DATA=data/cifar10-demo
W=$(mktemp -d)
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"

step() {  # step NAME SECONDS CMD... : run with a limit, log to $W/NAME.log and $OUT/all.log, record the outcome
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$W/$name.log" 2>&1
    local rc=$?
    { echo "===== $name (rc $rc)"; cat "$W/$name.log"; } >>"$OUT/all.log"
    printf '%-22s rc=%-3s %4ss\n' "$name" "$rc" "$((SECONDS - t0))" | tee -a "$SUMMARY"
}

nvidia-smi -L 2>&1 | tee -a "$SUMMARY"
$PY -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))" 2>&1 | tee -a "$SUMMARY"

train() {
    TRAIN=($PY -m dinokit train --preset demo --data_path $DATA/train --time_budget "" --epochs 2 --warmup_epochs 1 --log_every 10)
    # bf16 autocast, then a second run with more epochs must resume from the first's checkpoint
    step train_bf16 75 "${TRAIN[@]}" --output_dir "$W/bf16" --precision bf16
    step resume_bf16 60 "${TRAIN[@]}" --output_dir "$W/bf16" --precision bf16 --epochs 3
    # the official flag: fp16 with a grad scaler on CUDA
    step train_fp16 75 "${TRAIN[@]}" --output_dir "$W/fp16" --use_fp16 true
    # one process through torchrun (one GPU: a single rank, so no NCCL group is formed)
    step torchrun 75 $PY -m torch.distributed.run --standalone --nproc_per_node=1 -m dinokit train \
        --preset demo --data_path $DATA/train --time_budget "" --epochs 1 --warmup_epochs 0 --output_dir "$W/ddp"
    # two processes on a one-GPU machine must stop with a message that says what to change
    step torchrun_2_on_1gpu 60 $PY -m torch.distributed.run --standalone --nproc_per_node=2 -m dinokit train \
        --preset demo --data_path $DATA/train --time_budget "" --epochs 1 --warmup_epochs 0 --output_dir "$W/ddp2"
    grep -h -m1 "CUDA device(s)" "$W/torchrun_2_on_1gpu.log" >>"$SUMMARY"
    for run in bf16 fp16 ddp; do echo "== $run/log.txt"; tail -3 "$W/$run/log.txt"; done >>"$SUMMARY" 2>&1
    grep -h "resumed from" "$W/resume_bf16.log" >>"$SUMMARY"
}

BENCH=($PY benchmarks/throughput.py --json)
bench() {
    step bench_cifar 60 "${BENCH[@]}" --preset cifar
    step bench_cifar_b512 60 "${BENCH[@]}" --preset cifar --set '{"batch_size_per_gpu": 512}'
    step bench_vits16 80 "${BENCH[@]}" --preset vits16
    step bench_vits16_b64 80 "${BENCH[@]}" --preset vits16 --set '{"batch_size_per_gpu": 64}'
    step bench_vits16_bf16 80 "${BENCH[@]}" --preset vits16 --precision bf16 --set '{"batch_size_per_gpu": 64}'
}
compile() {
    step bench_cifar_b512_compile 240 "${BENCH[@]}" --preset cifar --compile --set '{"batch_size_per_gpu": 512}'
    step bench_vits16_compile 240 "${BENCH[@]}" --preset vits16 --compile --set '{"batch_size_per_gpu": 64}'
}

profile() {  # kernel launches per step and where the GPU time goes
    step profile_cifar_b512 90 $PY benchmarks/profile_step.py --preset cifar --set '{"batch_size_per_gpu": 512}'
    step profile_vits16_b64 90 $PY benchmarks/profile_step.py --preset vits16 --set '{"batch_size_per_gpu": 64}'
    grep -h "kernel launches" "$W"/profile_*.log >>"$SUMMARY"
}

tests() {
    step pytest 150 env DINOKIT_CIFAR10=$PWD/$DATA $PY -m pytest -q -n 14 -p no:cacheprovider
    cp "$W/pytest.log" "$OUT/"; tail -25 "$W/pytest.log"
}
demo() {
    step demo 120 $PY -m dinokit demo --output_dir "$W/demo" --minutes 1
    tail -2 "$W/demo.log"
    cp "$W/demo/loss_curve.png" "$OUT/" 2>/dev/null
}

for section in "${@:-train bench profile tests demo}"; do
    for s in $section; do "$s"; done
done
cat "$W"/bench_*.log 2>/dev/null | grep '^{' >"$OUT/bench.jsonl"

echo "== summary"; cat "$SUMMARY"; cat "$OUT/bench.jsonl"
