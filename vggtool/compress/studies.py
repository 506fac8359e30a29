"""Named studies that span the families: sets of registered variants built by one
`vggtool compress --set NAME` (a rerun builds only what is missing).

`full-size` is the study on a trained full-size VGG19-BN within one session on a
2-core CPU (`make real-study`): the report's eight come from `--set report`; this
set adds int8 on the x86 (oneDNN) engine and on the engine measured faster here
(`--engine auto`), ONNX Runtime int8, structured pruning
of half and of 70% of the parameters distilled from the unpruned parent and
stacked with each int8 path, QAT, and the Deep Compression pipeline. Its
fine-tuning epochs are sized for that budget (bf16 where the CPU has it): 2 for
half the parameters removed, 8 and 16 for 70%, 1 of QAT (float32; at peak lr 1e-3,
and at 1e-4 alone and distilled), 2 before weight sharing (shared at 8/5, 7/4 and
6/4 bits), where the `beyond` and `deep-compression` sets fine-tune 5 (3 for QAT).
"""

from __future__ import annotations

from vggtool.compress.base import register, register_stack
from vggtool.compress.cluster import WeightSharing
from vggtool.compress.pruning import L1Prune
from vggtool.compress.quant_onnx import OnnxInt8
from vggtool.compress.quant_torch import QatQuant, StaticQuant
from vggtool.compress.structured import StructuredPrune

FULL_SIZE = ("full-size",)
INT8 = (StaticQuant(fuse=True), StaticQuant(fuse=True, engine="x86"), OnnxInt8())

# and the engine measured faster on this CPU at the bench's batch (both timings in its meta.json)
register(*INT8, StaticQuant(fuse=True, engine="auto"), QatQuant(finetune_epochs=1), sets=FULL_SIZE)
# and QAT at a tenth of the rate, alone and distilled: on our own model (trained to a final lr of 1e-5) one
# epoch at peak 1e-3 scored test top-1 error 0.3155 against static int8 fused's 0.3137 (results/vgg19-cifar100)
register(QatQuant(finetune_epochs=1, finetune_lr=1e-4), QatQuant(finetune_epochs=1, finetune_lr=1e-4, distill=True),
         sets=FULL_SIZE)
# 0.7 at 16 epochs too: on our own 30-epoch model (test top-1 0.3125) 8 epochs ended 1.8 points above the
# baseline on validation, still converging (train accuracy 0.80)
for _pruned in (StructuredPrune(amount=0.5, distill=True, finetune_epochs=2),
                StructuredPrune(amount=0.7, distill=True, finetune_epochs=8),
                StructuredPrune(amount=0.7, distill=True, finetune_epochs=16)):
    register(_pruned)
    for _int8 in INT8:
        register_stack(_pruned.name, _int8.name, sets=FULL_SIZE)
_SPARSE = L1Prune("global", 0.9, linear_amount=0.97, finetune_epochs=2)
register(_SPARSE)
for _bits in ((8, 5), (7, 4), (6, 4)):  # the paper's 8/5 bits, and fewer: how far sharing goes before error rises
    register(WeightSharing(*_bits))
    register_stack(_SPARSE.name, WeightSharing(*_bits).name, sets=FULL_SIZE)
