#!/usr/bin/env bash
# GPU smoke run (issue: the paper's recipes at scale): a shortened CIFAR-style IMP on a lent GPU with mixed
# precision, fixed 20% vs adaptive, on real data small enough to carry: Fashion-MNIST padded to 32x32 with
# the CIFAR ResNet-20. Prints both summaries and the adaptive/fixed ratios; writes under runs/gpu_smoke/.
#   bash benchmarks/gpu_smoke.sh [DATA_ROOT]     (DATA_ROOT holds the four Fashion-MNIST IDX .gz files)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_ROOT=${1:-/usr/share/datasets/fashion-mnist}
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.cuda.get_device_name(0))"
python benchmarks/adaptive_vs_fixed.py -f yamls/fmnist_imp.yaml --target 0.9 --out runs/gpu_smoke \
  device=gpu precision=amp_bf16 model.name=resnet20 model.in_channels=1 data.pad_to=32 \
  data.data_root="$DATA_ROOT" data.train_subset=null data.batch_size=128 max_duration=6ep eval_interval=6ep \
  algorithms.IMP.rewind=469ba data.num_workers=4 analysis.enabled=false
# Throughput of a masked training step vs the same step without IMP (target <= 1.02), bf16 on the GPU.
python benchmarks/mask_overhead.py --device gpu --precision amp_bf16 --model resnet20 --batch-size 128 --steps 30 --rounds 5
python benchmarks/mask_overhead.py --device gpu --precision amp_bf16 --model resnet50 --image-size 224 --batch-size 256 --steps 20 --rounds 4
# Landscape evaluation on the GPU: evaluate() vs a plain forward vs the naive load_state_dict loop (targets <= 1.3, >= 3).
python benchmarks/landscape_eval.py --model resnet20 --points 64 --repeats 3 --device gpu
# The analysis on the GPU (model on the local device, NCCL all-reduce when several GPUs are visible).
python -m composer_imp.analyze runs/gpu_smoke/fixed --betas 0,0.25,0.5,0.75,1 --planes 11 --overwrite
if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -gt 1 ]; then
  composer -n 2 -m composer_imp.analyze runs/gpu_smoke/fixed --betas 0,0.25,0.5,0.75,1 --planes 11
  # AdaptiveIMP's sweep spread over 2 GPUs (NCCL all-reduce of losses and BatchNorm statistics).
  sed 's/^  IMP:$/  AdaptiveIMP:/' yamls/fmnist_imp.yaml > runs/gpu_smoke/fmnist_adaptive.yaml
  composer -n 2 run.py -f runs/gpu_smoke/fmnist_adaptive.yaml device=gpu precision=amp_bf16 data.data_root="$DATA_ROOT" \
    save_folder=runs/gpu_smoke/adaptive_2gpu levels=2 analysis.enabled=false progress_bar=false
fi
