#!/usr/bin/env bash
# What a session with a GPU runs, in one call (its numbers go to benchmarks/RESULTS.md):
#   bash benchmarks/gpu_checks.sh [WORKDIR [RESULTDIR]]
# 1. bench_sweep: 64 reference members, one by one vs. as one stack (eager and CUDA graph);
# 2. the 64-member reference sweep through `gantrain sweep`: 4 learning rates x 16 seeds, 200 epochs x 600
#    steps (120,000 steps) per member, on 60,000 MNIST-format images -- if step 1 says it can end in time,
#    else 2 epochs of it (every default: samples, checkpoints, eval), to check the pipeline;
# 3. the tests that name a device, on the GPU (members = lone runs over losses x models x optimizers, resume);
# 4. bench_train on the GPU (the floor, the step in its loop, a whole process);
# 5. bench_data: a folder of photos prepared, then fed to a 64-px DCGAN in memory, streamed and by a DataLoader;
# 6. bench_sizes: the photo presets (64-px DCGAN, 128-px SNGAN) alone and as a stack of 4, memory per member
#    (torch's peak allocation) against the launcher's estimate;
# 7. ranks: one run on several devices -- a 1-rank run under torchrun (NCCL's process group), 2 gloo ranks on
#    cuda:0 equal to 1 rank in float64, and where N > 1 GPUs are visible the N-GPU scaling of dcgan64 and
#    sngan128 and SyncBatchNorm across GPUs; it prints what it could not check;
# 8. inception: bench_inception (images/s of the FID Inception network) and a 50,000-sample FID: gantrain stats
#    of 50,000 real images, then gantrain eval n=50000 ref= against them (needs torch-fidelity; weights from
#    eval.inception_weights=auto, else random ones of the same shape: the timings hold, the values are no FIDs).
# Where gantrain is not installed (a bare GPU machine with torch), it runs from the checkout: src/ and any
# pure-Python packages copied into .devsite/ go on PYTHONPATH (the GPU image has torch, torchmetrics, rich,
# matplotlib; copy hydra, omegaconf, antlr4 and mlxtend from .venv's site-packages into an ignored .devsite/
# and carry it). DEVICE=cpu MEMBERS=4 STEPS=20 tries it here.
# Knobs: SET="trainer.precision=tf32" (overrides for the benchmark and the sweep), SWEEP_SET="eval.enabled=false"
# (the sweep only), SKIP="bench_sweep tests bench_train bench_data bench_sizes ranks inception", SIZE_STEPS, PROFILE=1 (the stacked step's top kernels), MIN_RATE, SWEEP_LIMIT, TESTS, TEST_LIMIT.
set -u
work=${1:-/tmp/gpu_checks}  # data and run dirs (large)
results=${2:-$work/results}  # the report, a member's curves and samples
device=${DEVICE:-cuda}
members=${MEMBERS:-64}
steps=${STEPS:-1000}
mkdir -p "$work" "$results"
if ! python3 -c "import gantrain.conf" 2>/dev/null; then
    export PYTHONPATH="$PWD/src:$PWD/.devsite${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
stage() { echo; echo "=== $1 ($(date +%T))"; }

stage "machine"
python3 -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null

skip() { case " ${SKIP:-} " in *" $1 "*) echo "(skipped)"; return 0;; esac; return 1; }

stage "bench_sweep"
rate=${MIN_RATE:-400}  # skipped: the sweep runs in full (and meets torch.compile's caches cold, as a new machine does)
skip bench_sweep || { python3 benchmarks/bench_sweep.py --device "$device" --members "$members" --steps "$steps" \
    --sequential-members 4 ${PROFILE:+--profile} --set ${SET:-} | tee "$work/bench_sweep.txt"
    rate=$(grep -o '([0-9.]* stacked' "$work/bench_sweep.txt" | tail -1 | tr -d '(' | cut -d' ' -f1); }

# 60,000 MNIST-format images tiled from the bundled 5,000: the reference workload's size (600 steps an epoch)
data="$work/mnist60k"
[ -d "$data" ] || PYTHONPATH=benchmarks python3 -c "
from pathlib import Path; from bench_train import write_mnist_idx; write_mnist_idx(Path('$data'), 60000)"
epochs=200
if [ "$(python3 -c "print(int(float('${rate:-0}') < ${MIN_RATE:-400}))")" = 1 ]; then
    epochs=2  # 120,000 steps at under MIN_RATE batched steps/s would not end in time
fi
stage "the ${members}-member reference sweep: 4 learning rates x $((members / 4)) seeds, $epochs epochs x 600 steps"
seeds=$(seq -s, 0 $((members / 4 - 1)))
every=$(( epochs >= 20 ? ${EVERY:-20} : 1 ))  # samples and checkpoints every EVERY epochs of 200
start=$SECONDS
timeout -k 20 "${SWEEP_LIMIT:-330}" python3 -m gantrain sweep "optim.lr=1e-4,2e-4,4e-4,8e-4" "seed=$seeds" data=mnist "data.root=$data" \
    "epochs=$epochs" "device=$device" "sample_every=$every" "ckpt_every=$every" "hydra.sweep.dir=$work/sweep" ${SET:-} ${SWEEP_SET:-} \
    > "$work/sweep.log" 2>&1
echo "sweep wall time: $((SECONDS - start)) s (limit ${SWEEP_LIMIT:-330} s), started $(date -d "-$((SECONDS - start)) sec" +%T)"
grep -v "Epoch\[" "$work/sweep/sweep.log" | tail -14  # timestamped
grep "Epoch\[1/" "$work/sweep/sweep.log" 2>/dev/null | head -1  # the first log line: start-up and compile behind it
grep "Epoch\[" "$work/sweep.log" | tail -1  # how far it got, if the limit stopped it
COLUMNS=200 python3 -m gantrain report "$work/sweep" 2>&1 | tail -24
cp "$work/sweep/report.csv" "$work/sweep/0/curves.png" "$results/" 2>/dev/null
grep -v "Epoch\[" "$work/sweep/sweep.log" > "$results/sweep_log_without_epoch_lines.txt" 2>/dev/null
cp "$(ls "$work"/sweep/0/samples/*.png | tail -1)" "$results/member0_last_samples.png" 2>/dev/null

stage "tests on $device"
skip tests || timeout "${TEST_LIMIT:-300}" env GANTRAIN_TEST_DEVICE=$device python3 -m pytest -q -p no:cacheprovider \
    -n "${TEST_WORKERS:-8}" ${TESTS:-tests/test_stacks.py tests/test_train.py} 2>&1 | tail -25

stage "bench_train"
skip bench_train || python3 benchmarks/bench_train.py --device "$device" --steps "$steps" --rounds 3

stage "bench_data: 20,000 CelebA-shaped JPEGs prepared once, served in memory, streamed and by a DataLoader"
skip bench_data || python3 benchmarks/bench_data.py --device "$device" --images "${DATA_IMAGES:-20000}" --steps 50 \
    --keep "$work/celeba_like"
stage "bench_sizes: dcgan64 and sngan128, a lone run and a stack of 4, memory per member against the estimate"
skip bench_sizes || (cd benchmarks && python3 bench_sizes.py --device "$device" --steps "${SIZE_STEPS:-20}" --members 4)
stage "ranks: one run on several devices"
skip ranks || {
    rdata="$work/ranks_mnist"; mkdir -p "$rdata"
    [ -d "$rdata/MNIST" ] || PYTHONPATH=tests python3 -c "from pathlib import Path; from conftest import write_mnist; write_mnist(Path('$rdata'), 600)"
    rargs="data=mnist data.root=$rdata epochs=2 batch_size=20 hidden_size=64 latent_size=16 log_every=10 eval.enabled=false"
    echo "-- 1 rank under torchrun (an NCCL process group of one: the code path, not a collective)"
    python3 -m torch.distributed.run --standalone --nproc_per_node=1 -m gantrain train $rargs device=cuda \
        "hydra.run.dir=$work/ranks_nccl1" 2>&1 | tail -2
    echo "-- 2 gloo ranks on cuda:0 against 1 rank, float64 (R=2 must equal R=1 to ~1e-15)"
    GANTRAIN_DIST_BACKEND=gloo python3 -m torch.distributed.run --standalone --nproc_per_node=2 -m gantrain train $rargs \
        device=cuda trainer.precision=fp64 "hydra.run.dir=$work/ranks_gloo2" 2>&1 | tail -1
    python3 -m gantrain train $rargs device=cuda trainer.precision=fp64 "hydra.run.dir=$work/ranks_one" 2>&1 | tail -1
    python3 -c "
import torch
a, b = (torch.load('$work/' + d + '/checkpoints/last.pt', weights_only=True) for d in ('ranks_gloo2', 'ranks_one'))
gap = max(float((a[n][k] - b[n][k]).abs().max() / b[n][k].abs().max()) for n in ('G', 'D') for k in b[n])
print(f'2 gloo ranks on cuda:0 vs 1 rank, float64: largest relative gap {gap:.2e} ({\"ok\" if gap < 1e-9 else \"DIFFERS\"})')"
    ngpu=$(python3 -c "import torch; print(torch.cuda.device_count())")
    if [ "$ngpu" -gt 1 ]; then
        echo "-- $ngpu GPUs: scaling of one run (NCCL), images/s against one GPU"
        python3 benchmarks/bench_ranks.py --device cuda --ranks "$ngpu" --workloads dcgan64 sngan128 --steps "${RANK_STEPS:-30}"
        echo "-- SyncBatchNorm over $ngpu GPUs (model=dcgan, BatchNorm in G and D)"
        python3 -m torch.distributed.run --standalone --nproc_per_node="$ngpu" -m gantrain train $rargs model=dcgan \
            trainer.sync_batchnorm=true device=cuda "batch_size=$((ngpu * 4))" "hydra.run.dir=$work/ranks_syncbn" 2>&1 | tail -2
    else
        echo "-- 1 GPU: the same benchmark with 2 gloo ranks sharing it (the all-reduce's cost, not scaling)"
        GANTRAIN_DIST_BACKEND=gloo python3 benchmarks/bench_ranks.py --device cuda --ranks 2 --same-gpu --workloads dcgan64 --steps 20
        echo "NOT CHECKED here (one GPU): multi-GPU scaling, SyncBatchNorm across GPUs, NCCL collectives between GPUs"
    fi
    echo "NOT CHECKED by this script: NCCL across nodes (multi-node), a rank lost over NCCL (its watchdog's timeout)"
}
stage "inception: the FID network's cost, and one 50,000-sample FID"
skip inception || {
    weights=auto
    if ! python3 -c "from gantrain.evaluation.inception_weights import find_weights; find_weights('auto')" 2>/dev/null; then
        weights="$work/random_inception.pth"  # the 87 MB weights file is over what a call carries: same shape, random
        python3 -c "
import torch; from gantrain.evaluation.inception import build_network
torch.manual_seed(0); torch.save(build_network().state_dict(), '$weights')" \
            && echo "no FID Inception weights here: timing random weights of the same network (values are not FIDs)"
    fi
    [ "$weights" = auto ] && python3 benchmarks/bench_inception.py --device "$device" --n 5000
    ckpt=$(ls "$work"/sweep/0/checkpoints/last.pt 2>/dev/null || true)
    if [ -n "$ckpt" ]; then
        rm -f "$work/mnist60k_50k.npz"
        start=$SECONDS
        python3 -m gantrain stats data=mnist "data.root=$data" n=50000 "inception_weights=$weights" device="$device" \
            "out=$work/mnist60k_50k.npz" 2>&1 | grep -v "it/s" | tail -2
        echo "stats of 50,000 real images: $((SECONDS - start)) s"
        start=$SECONDS
        python3 -m gantrain eval "ckpt=$ckpt" features=inception "inception_weights=$weights" n=50000 device="$device" \
            "ref=$work/mnist60k_50k.npz" "out=$work/fid50k" 2>&1 | tail -8
        echo "FID of 50,000 samples against the statistics file: $((SECONDS - start)) s"
    else
        echo "NOT CHECKED: no checkpoint of the sweep (stage 2) to take 50,000 samples from"
    fi
}
stage "done"
