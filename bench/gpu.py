"""Target 6: GPU runtime options (batch size, AMP, channels_last, torch.compile, pinned copies on a side
stream, decoding off the critical path), each measured on a GPU when one is visible.

On a GPU: Mask R-CNN R50-FPN at PennFudanPed's native size (min_size 800), images/s model-only and end
to end, fp32 and fp16 autocast, channels_last and pinMemory on/off, via the same ppl benchmark. Without
a GPU every row says so; nothing is estimated.
"""

from __future__ import annotations

from pathlib import Path

from bench.common import ModelSpec, Row

NOT_LENT = "not measured: no GPU lent to this task"
VARIANTS = (("fp32", {}), ("fp16 AMP", {"precision": "fp16"}), ("fp16 AMP + channels_last", {"precision": "fp16",
            "channels_last": True}), ("fp16 AMP, pinMemory off", {"precision": "fp16", "pin_memory": False}))


def run(work: Path, data_filter: str) -> list[Row]:
    import torch

    if not torch.cuda.is_available():
        return [Row(f"6 GPU {name}", "e2e / model-only images/s", None, ">= 0.90", None, NOT_LENT)
                for name, _ in VARIANTS]
    from bench import ppl

    rows = []
    spec = ModelSpec(min_size=800, max_size=1333, detections=100, score_thresh=0.05)
    for i, (name, options) in enumerate(VARIANTS):
        got, info = ppl.run(work / f"gpu-{i}", spec, data_filter, 8 << 20, device="cuda", batch=8, **options)
        row = got[0]
        row.target, row.detail = f"6 GPU {name}", f"{row.detail} on {torch.cuda.get_device_name(0)}"
        rows.append(row)
    return rows
