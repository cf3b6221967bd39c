#!/usr/bin/env bash
# The checks and timings that need a CUDA machine, in one run (about 12 minutes on one H200).
#
#   OUT=/some/folder bash benchmarks/gpu_checks.sh
#
# Run from the repository root with a Python that has torch (CUDA), pytest, networkx, tqdm,
# PyYAML; mtlkit is taken from ./src. Each part has its own time limit and writes its output
# to $OUT/<part>.txt, so one failing part does not hide the others. No GPU is needed anywhere
# else: CI and `make test` skip these (tests/test_cuda.py skips without CUDA).
set -u
OUT=${OUT:-gpu-checks}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 MPLBACKEND=Agg
PY=${PYTHON:-python3}

part() {  # part NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    echo "   rc=$? ($(tail -n 1 "$OUT/$name.txt" | cut -c1-120))"
}

nvidia-smi -L >"$OUT/device.txt" 2>&1
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" >>"$OUT/device.txt" 2>&1

# Correctness on the GPU: every balancer in both modes ends where the CPU run ends (float64);
# bf16 training and exact resume on CUDA; FSDP2 on NCCL (world size 1).
part cuda_tests 300 $PY -m pytest tests/test_cuda.py tests/training/test_trainer.py -k "cuda or device" -q -p no:cacheprovider -rfEs
part fsdp_nccl 120 torchrun --standalone --nproc_per_node=1 tests/training/fsdp_gpu_check.py

# Timings (CUDA timings synchronised by each script).
part balancers_cuda 200 $PY benchmarks/balancers.py --device cuda --threads default --rounds 9
part graph_cuda 120 $PY benchmarks/graph_overhead.py --device cuda --threads default --samples 100
part trainer_cuda 200 $PY benchmarks/trainer_overhead.py --device cuda --threads default --clock wall
part distributed_cuda 120 $PY benchmarks/distributed.py --device cuda --procs 1 --batch 256 --repeats 1 \
    --configs ew/plain ew mgda mgda/rep imtl_g imtl_g/rep

# Do the batched and per-task Jacobian passes round alike on CUDA, and which is faster there.
part determinism_cuda 240 $PY benchmarks/determinism.py --device cuda
part jacobian_ways_cuda 200 $PY benchmarks/jacobian_ways.py --device cuda --clock wall --rounds 5
part fsdp_gramian_cpu 120 $PY benchmarks/fsdp_gramian.py

# Weak scaling on the machine's idle CPU cores (gloo, one thread per process).
part distributed_cpu 240 $PY benchmarks/distributed.py --procs 1 2 4 --repeats 1
