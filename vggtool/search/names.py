"""What `vggtool search` offers on its command line, importable without torch."""

from __future__ import annotations

from vggtool import runtimes as rt

RUNTIMES = ("torch", *rt.RUNTIMES)  # where a candidate runs: torch models in torch, ONNX files and IRs elsewhere
OBJECTIVES = ("b1", "batch", "size")  # ms per image at batch 1, at the bench's batch, stored MB
OBJECTIVE_FIELDS = {"b1": "b1_ms", "batch": "batch_ms", "size": "size_mb"}
