"""Benchmark: brainmets nnU-Net inference seconds per volume and memory peak.

Usage::

    .venv/bin/python bench/brainmets.py [--model RESULTS_FOLDER] [--spacing 1] [--threads 2]
                                        [--device cpu|cuda] [--mirroring] [--repeats 1]

Runs the model on a SPACE-like phantom volume (144 x 192 x 160 mm field of view;
1 mm gives a whole-brain 1 mm^3 volume). Without ``--model`` the compact
architecture of ``pacsnode train brainmets`` is run with random weights: the
time depends on the architecture, the patch and the tiling, not on the weight
values. Prints wall seconds per volume (median of the repeats), the process's
peak resident memory and, on CUDA, the peak GPU memory.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    p = argparse.ArgumentParser(description="brainmets inference benchmark")
    p.add_argument("--model", type=Path)
    p.add_argument("--spacing", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--mirroring", action="store_true")
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()

    import numpy as np
    import torch

    from analyzers.brainmets.dataset import (
        compact_plans,
        dataset_json,
        phantom_case_arrays,
        untrained_network,
        write_results_folder,
    )
    from analyzers.brainmets.inference import NnUNetModel
    from analyzers.phantoms.brainmets import simulate_brainmets

    torch.manual_seed(0)
    case = simulate_brainmets(0, 0, metastases=5, spacing_mm=args.spacing, veins=4)
    image, _ = phantom_case_arrays(case, "space")
    shape = image.GetSize()[::-1]
    folder = args.model
    tmp = None
    if folder is None:
        tmp = tempfile.TemporaryDirectory()
        plans = compact_plans("Dataset999_Bench", (args.spacing,) * 3, shape, {"mean": 500.0, "std": 200.0})
        dataset = dataset_json(1)
        folder = write_results_folder(Path(tmp.name), plans, dataset, [untrained_network(plans, dataset).state_dict()])
    model = NnUNetModel(folder, mirroring=args.mirroring, device=args.device, threads=args.threads)
    model.predict_image(image)  # warm-up: loads weights, first-call overheads
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        seg = model.predict_image(image)
        if args.device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"volume {shape} voxels at {args.spacing} mm, device {args.device}, threads {args.threads}, "
          f"mirroring {args.mirroring}, model {'given' if args.model else 'compact, random weights'}")
    print(f"inference seconds per volume: {statistics.median(seconds):.2f} (runs: "
          f"{', '.join(f'{s:.2f}' for s in seconds)})")
    print(f"peak resident memory: {peak_mib:.0f} MiB; foreground voxels {int(np.count_nonzero(seg))}")
    if args.device == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
