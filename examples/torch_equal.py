"""Compare two PyTorch checkpoints tensor for tensor (``torch.equal``: same shape, same dtype,
same bits), model and optimizer state alike.

    python3 -m examples.torch_equal results-a/final.pt results-b/final.pt

Prints one JSON object on stdout: ``{"equal": bool, "tensors": N, "values": M,
"mismatches": [paths…]}``; exits 0 when everything is equal, 1 when not. Used by the bit-exact
resume test, and useful for checking your own job's resume the same way.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch


def compare(a: Any, b: Any, path: str, out: dict[str, Any]) -> None:
    """Walk both structures together; every leaf must match exactly."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        out["tensors"] += 1
        same = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.dtype == b.dtype and torch.equal(a, b))
        if not same:
            out["mismatches"].append(path)
    elif isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            out["mismatches"].append(f"{path} (keys differ: {sorted(map(str, set(a) ^ set(b)))})")
        for k in sorted(set(a) & set(b), key=str):
            compare(a[k], b[k], f"{path}.{k}", out)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            out["mismatches"].append(f"{path} (lengths {len(a)} and {len(b)})")
        for i, (x, y) in enumerate(zip(a, b)):
            compare(x, y, f"{path}[{i}]", out)
    else:
        out["values"] += 1
        if a != b:
            out["mismatches"].append(f"{path} ({a!r} != {b!r})")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python3 -m examples.torch_equal A.pt B.pt", file=sys.stderr)
        return 2
    a, b = (torch.load(p, map_location="cpu", weights_only=True) for p in argv)
    out: dict[str, Any] = {"tensors": 0, "values": 0, "mismatches": []}
    compare(a, b, "", out)
    out["equal"] = not out["mismatches"]
    print(json.dumps(out))
    return 0 if out["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
