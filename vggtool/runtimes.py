"""Where a variant runs: in its own runtime (torch for a torch model, ONNX Runtime for an ONNX file, OpenVINO for
an OpenVINO IR), or an ONNX file in OpenVINO beside ONNX Runtime, in f32 or (on CPUs with native bf16) bf16.

A bench row's key is the variant's name, with "@RUNTIME" where it runs elsewhere than in its own runtime
("onnx-int8@openvino"), so every (variant, runtime) pair is a row of its own.
"""

from __future__ import annotations

from vggtool import cpu
from vggtool.errors import VggtoolError

RUNTIMES = ("onnxruntime", "openvino", "openvino-bf16")  # what `--runtime` chooses among
OPENVINO = {"openvino": "f32", "openvino-bf16": "bf16"}  # an OpenVINO runtime -> its inference precision
NAMES = {"torch": "torch", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "openvino-bf16": "OpenVINO bf16"}
# a variant's own runtime, by the output its recipe declares (vggtool.compress.Output values)
OWN = {"float": "torch", "quantized": "torch", "onnx": "onnxruntime", "openvino": "openvino"}
# the runtimes a stored file can run in, by output
RUNS_IN = {"onnx": ("onnxruntime", "openvino", "openvino-bf16"), "openvino": ("openvino", "openvino-bf16")}


def check(runtimes: tuple[str, ...]) -> None:
    """Refuse an unknown runtime, OpenVINO where it is not installed (naming the install command), and bf16 on a
    CPU without native bf16: before a bench spends minutes scoring."""
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise VggtoolError(f"unknown runtime {unknown[0]!r}: choose one of {', '.join(RUNTIMES)}")
    if any(r in OPENVINO for r in runtimes):
        from vggtool import openvino_runtime

        openvino_runtime.version()  # the install command, where it is missing
    if "openvino-bf16" in runtimes and not cpu.has_native_bf16():
        raise VggtoolError(f"runtime openvino-bf16 needs native bf16 ({' or '.join(cpu.BF16_FLAGS)}), which this "
                           f"CPU ({cpu.cpu_info()['cpu_model']}) lacks; use openvino")


def expand(runtimes: tuple[str, ...]) -> tuple[str, ...]:
    """The runtimes a bench measures: those asked for, each once, and OpenVINO's bf16 beside its f32 where the
    CPU computes bf16 natively (its accuracy is measured like any other row's)."""
    out = list(dict.fromkeys(runtimes or ("onnxruntime",)))
    if "openvino" in out and "openvino-bf16" not in out and cpu.has_native_bf16():
        out.insert(out.index("openvino") + 1, "openvino-bf16")
    return tuple(out)


def resolve(output: str, runtime: str | None, name: str) -> str:
    """The runtime a variant of `output` runs in when `runtime` is asked for (None: its own); a one-line error
    where it cannot run there (a torch model in OpenVINO, an OpenVINO IR in ONNX Runtime)."""
    own = OWN.get(output, "torch")
    if runtime is None or runtime == own:
        return own
    if runtime not in RUNTIMES:
        raise VggtoolError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    if runtime not in RUNS_IN.get(output, ()):
        raise VggtoolError(f"variant {name} is {_what(output)}: it runs in {NAMES[own]} only, not in "
                           f"{NAMES[runtime]}" + ("; export it (`vggtool export --onnx --from-variant "
                                                  f"{name}`) or quantize it with --onnx to run it there"
                                                  if own == "torch" else ""))
    return runtime


def _what(output: str) -> str:
    return {"onnx": "an ONNX file", "openvino": "an OpenVINO IR"}.get(output, "a torch model")


def plan(output: str, runtimes: tuple[str, ...], name: str) -> tuple[dict[str, str], dict[str, str]]:
    """A bench's rows of one variant: {key: runtime} for the runtimes in `runtimes` it runs in (its own when it
    runs in none of them), and {key: reason} for those it does not run in (a torch model is not run in OpenVINO:
    skipped, not failed)."""
    own = OWN.get(output, "torch")
    rows = {key(name, r, output): r for r in runtimes if r in RUNS_IN.get(output, ())}
    skipped = {key(name, r, output): f"{_what(output)} runs in {NAMES[own]} only" for r in runtimes
               if r in OPENVINO and r not in RUNS_IN.get(output, ())}
    return rows or {name: own}, skipped


def key(name: str, runtime: str, output: str) -> str:
    """The row key of a variant run in `runtime`: its name in its own runtime, else "name@runtime"."""
    return name if runtime == OWN.get(output, "torch") else f"{name}@{runtime}"


def variant_of(row_key: str) -> str:
    """The variant name in a row key."""
    return row_key.split("@", 1)[0]


def label(short: str, runtime: str | None, output: str | None) -> str:
    """A row's display label: the variant's, with " on OpenVINO" where it runs elsewhere than in its own runtime."""
    if runtime is None or runtime == OWN.get(output or "", "torch"):
        return short
    return f"{short} on {NAMES[runtime]}"


def describe(settings: dict) -> str:
    """The settings a compiled model was read back with, in a few words for a row."""
    if settings.get("runtime") != "openvino":
        return ", ".join(f"{k} {v}" for k, v in settings.items() if k != "runtime")
    return (f"OpenVINO {settings['openvino'].split('-')[0]}, {settings['performance_hint']}, {settings['threads']} "
            f"threads, {settings['streams']} stream(s), {settings['precision_hint']} hint")
