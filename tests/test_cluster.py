"""Deep Compression on a tiny model: per-layer codebooks of at most 2^B entries,
pruned zeros kept, a lossless coded file far smaller than the dense one, the
prune -> fine-tune -> share -> code chain recorded and rebuilt in a fresh process,
and damaged files or bad options refused in one line."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from vggtool import codec
from vggtool import compress as c
from vggtool.compress.cluster import WeightSharing, bake, kmeans_1d, share_weights
from vggtool.errors import VggtoolError
from vggtool.models import ArchSpec, build_model

from .conftest import in_home, invoke, one_line_error

PRUNED = "prune-global-0.6-linearamount0.8-finetuneepochs1"


@pytest.fixture(scope="module")
def run(trained_run, session_home, tmp_path_factory):
    """A private copy of the tiny run with a pruned parent, a plain clustered variant,
    a centroid-fine-tuned one on the pruned parent, and the int8 of the latter."""
    run = tmp_path_factory.mktemp("cluster") / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("variants", "results"))
    with in_home(session_home):
        common = ("--run-dir", str(run))
        invoke("prune", "--global", "--amount", "0.6", "--linear-amount", "0.8", "--finetune-epochs", "1", *common)
        invoke("cluster", *common)
        invoke("cluster", "--conv-bits", "4", "--linear-bits", "3", "--finetune-epochs", "1", "--from-variant",
               PRUNED, "--name", "tuned", *common)
        invoke("quantize", "--static", "--fuse", "--from-variant", "tuned", "--name", "tuned-int8", *common)
    return run


def meta(run, name):
    return json.loads((run / "variants" / name / "meta.json").read_text())


def weights(run, name):
    model = c.load_variant(run / "variants" / name).model
    return {n: m.weight.detach() for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


# ---------------------------------------------------------------- the codec alone
@pytest.mark.parametrize("seed", range(6))
def test_huffman_and_relative_positions_round_trip(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 5000))
    symbols = rng.choice(int(rng.integers(1, 257)), n, p=None).astype(np.uint8)
    if seed % 2:
        symbols = np.minimum(rng.geometric(0.3, n), 255).astype(np.uint8)  # skewed, long and short codes
    data, bits = codec.huffman_encode(symbols)
    assert bits == codec.huffman_bits(symbols)
    assert np.array_equal(codec.huffman_decode(data, n, bits, "t"), symbols)
    numel = int(rng.integers(n, 4 * n + 2000))
    positions = np.sort(rng.choice(numel, n, replace=False))
    gaps = codec.gaps_encode(positions)
    assert np.array_equal(codec.gaps_decode(gaps, n, numel, "t"), positions)


def test_gaps_longer_than_a_byte_use_continuations():
    positions = np.array([0, 254, 255 + 254 + 1, 2000])
    gaps = codec.gaps_encode(positions)
    assert 255 in gaps.tolist() and np.array_equal(codec.gaps_decode(gaps, 4, 2001, "t"), positions)
    with pytest.raises(VggtoolError, match="outside its tensor"):
        codec.gaps_decode(gaps, 4, 1000, "t")


def test_huffman_code_lengths_are_limited_and_near_the_entropy():
    freq = np.zeros(256, dtype=np.int64)
    freq[:40] = 2 ** np.minimum(np.arange(40), 30)  # would need 39-bit codes unlimited
    lengths = codec.code_lengths(freq)
    assert lengths.max() <= codec.MAX_CODE_BITS and (2.0 ** -lengths[lengths > 0]).sum() <= 1
    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(100, 20, 20000), 0, 255).astype(np.uint8)
    p = np.bincount(x) / len(x)
    entropy = -(p[p > 0] * np.log2(p[p > 0])).sum() * len(x)
    assert entropy <= codec.huffman_bits(x) <= 1.01 * entropy + len(x) * 0.01


def test_kmeans_codebook_has_at_most_k_sorted_entries_and_assigns_the_nearest():
    v = torch.randn(5000)
    centroids, index = kmeans_1d(v, 16)
    assert len(centroids) <= 16 and torch.all(centroids[1:] > centroids[:-1])
    nearest = (v[:, None] - centroids[None]).abs().argmin(1)
    assert torch.equal((v - centroids[index]).abs(), (v - centroids[nearest]).abs())
    assert len(kmeans_1d(torch.tensor([0.5, 0.5, 0.5]), 8)[0]) == 1
    assert len(kmeans_1d(torch.tensor([1.0, 2.0]), 256)[0]) == 2


def test_encode_decode_is_exact_and_keeps_zeros():
    torch.manual_seed(0)
    model = build_model(ArchSpec("vgg11_bn", num_classes=10, width=0.125, dropout=0.0))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight[torch.rand_like(m.weight) < 0.7] = 0
    shared, bits = share_weights(model, WeightSharing(5, 3))
    state = bake(shared).state_dict()
    data, figures = codec.encode(state, bits)
    decoded, _ = codec.decode(data, "t")
    assert list(decoded) == list(state) and all(torch.equal(decoded[k], state[k]) for k in state)
    assert codec.state_sha256(decoded) == codec.state_sha256(state)
    for name, b in bits.items():
        assert len(codec.shared_values(decoded[name])) <= 2**b
        assert torch.equal(decoded[name] == 0, model.state_dict()[name] == 0)  # pruned zeros stay, none added
    dense = sum(t.numel() * t.element_size() for t in state.values())
    assert len(data) < dense / 4  # ~70% zeros and <= 5-bit indices: far below the dense bytes
    assert figures["shared_nonzero"] == sum(int((state[n] != 0).sum()) for n in bits)


def test_too_many_distinct_values_is_not_weight_shared():
    with pytest.raises(VggtoolError, match="not weight-shared"):
        codec.encode({"w": torch.arange(1, 40, dtype=torch.float32)}, {"w": 5})


def test_every_damaged_file_is_an_error_never_a_model(tmp_path):
    state = {"w": torch.tensor([0.0, 1.5, -1.5, 0.0, 1.5] * 40), "b": torch.randn(7)}
    data, _ = codec.encode(state, {"w": 2})
    assert torch.equal(codec.decode(data, "t")[0]["w"], state["w"])
    rng = np.random.default_rng(0)
    cases = [data[:n] for n in (0, 5, len(codec.MAGIC) + 4, len(data) // 2, len(data) - 1)]
    for _ in range(200):
        flipped = bytearray(data)
        i = int(rng.integers(len(flipped)))
        flipped[i] ^= 1 << int(rng.integers(8))
        cases.append(bytes(flipped))
    for case in cases:
        with pytest.raises(VggtoolError, match="corrupt|not a vggtool coded model"):
            codec.decode(case, "t")


def _resigned(data: bytes, change) -> bytes:
    """A container whose header and payload `change(header, payload)` edited, then signed again: damage that
    the sha256 and length checks cannot see, so only the stream's own validation can refuse it."""
    import hashlib
    import json

    n = int.from_bytes(data[len(codec.MAGIC) : len(codec.MAGIC) + 8], "little")
    start = len(codec.MAGIC) + 8
    header, payload = json.loads(data[start : start + n]), bytearray(data[start + n + 32 :])
    payload = change(header, payload)
    header.update(payload_bytes=len(payload), payload_sha256=hashlib.sha256(payload).hexdigest())
    head = json.dumps(header, separators=(",", ":")).encode()
    return codec.MAGIC + len(head).to_bytes(8, "little") + head + hashlib.sha256(head).digest() + bytes(payload)


def _index_stream(header: dict) -> tuple[dict, int, int]:
    entry = next(e for e in header["tensors"] if e["kind"] == "shared")
    return entry, *entry["index"]


def _not_a_prefix_code(header, payload):
    entry, start, _ = _index_stream(header)
    n = int.from_bytes(payload[start : start + 2], "little")
    payload[start + 2 : start + 2 + n] = bytes([1] * n)  # every symbol a 1-bit code: more codes than 1 bit holds
    return payload


def _more_bits_than_stored(header, payload):
    _index_stream(header)[0]["index_bits"] += 64
    return payload


def _stream_cut_short(header, payload):
    entry, start, length = _index_stream(header)
    entry["index"] = [start, length - 1]
    return payload


def _fewer_symbols_than_promised(header, payload):
    entry = _index_stream(header)[0]
    entry["index_bits"] -= 8 * 2  # the last two bytes' worth of code bits dropped
    entry["index"][1] -= 2
    return payload


@pytest.mark.parametrize("change", [_not_a_prefix_code, _more_bits_than_stored, _stream_cut_short,
                                    _fewer_symbols_than_promised])
def test_a_damaged_huffman_stream_signed_again_is_refused_by_the_stream_checks(change):
    state = {"w": torch.tensor([0.0, 1.5, -1.5, 0.5, 1.5, 2.5, -0.5] * 40)}
    data, _ = codec.encode(state, {"w": 3})
    assert torch.equal(codec.decode(_resigned(data, lambda h, p: p), "t")[0]["w"], state["w"])  # signing is right
    with pytest.raises(VggtoolError, match="corrupt"):
        codec.decode(_resigned(data, change), "t")


# ---------------------------------------------------------------- the recipe on a tiny run
def test_codebooks_have_at_most_2_to_the_b_entries_per_layer(run):
    for name, (cb, lb) in (("cluster-c8l5", (8, 5)), ("tuned", (4, 3))):
        entries = meta(run, name)["figures"]["codebook_entries"]
        for layer, w in weights(run, name).items():
            b = cb if w.dim() == 4 else lb
            assert 1 <= len(codec.shared_values(w)) <= 2**b
            assert entries[f"{layer}.weight"] == len(codec.shared_values(w))


def test_pruned_zeros_stay_zero_through_sharing_and_centroid_fine_tuning(run):
    parent, child = weights(run, PRUNED), weights(run, "tuned")
    assert meta(run, PRUNED)["figures"]["sparsity_conv"] == pytest.approx(0.6, abs=0.01)
    for layer, w in parent.items():
        assert torch.equal(child[layer] == 0, w == 0), layer
    tuned = meta(run, "tuned")["figures"]
    assert tuned["finetune"]["epochs"] == 1 and tuned["sparsity_conv"] == meta(run, PRUNED)["figures"]["sparsity_conv"]


def test_centroid_fine_tuning_sums_each_clusters_gradients_into_its_centroid():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    shared, _ = share_weights(model, WeightSharing(2, 2))
    p = shared[0].parametrizations.weight[0]
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))

    w = shared[0].weight.detach().clone().requires_grad_()  # the same forward with a free weight
    out = nn.functional.linear(nn.functional.relu(nn.functional.linear(x, w, shared[0].bias)), shared[2].weight,
                               shared[2].bias)
    nn.functional.cross_entropy(out, y).backward()
    expected = torch.zeros_like(p.centroids).index_add_(0, p.index[p.mask], w.grad[p.mask])

    nn.functional.cross_entropy(shared(x), y).backward()
    assert torch.allclose(p.centroids.grad, expected, atol=1e-6)
    before = p.centroids.detach().clone()
    torch.optim.SGD([p.centroids], lr=0.1).step()
    assert not torch.equal(p.centroids.detach(), before)
    assert len(codec.shared_values(bake(shared)[0].weight)) <= 4


def test_stored_file_is_the_size_and_far_below_the_dense_model(run):
    base = (run / "variants" / "baseline" / "model.safetensors") if (run / "variants" / "baseline").exists() else None
    dense_bytes = (run / "best.safetensors").stat().st_size if base is None else base.stat().st_size
    for name, ratio in (("cluster-c8l5", 3.0), ("tuned", 6.0)):
        m = meta(run, name)
        f, folder = m["figures"], run / "variants" / name
        assert m["file"] == "model.vdc" and not (folder / "model.safetensors").exists()
        assert f["size_mb"] == (folder / "model.vdc").stat().st_size / 1e6 == f["file_bytes"] / 1e6
        assert f["state_dict_mb"] > f["size_mb"] and f["dense_zlib_bytes"] > f["file_bytes"]
        assert f["file_bytes"] * ratio < dense_bytes, (name, f["file_bytes"], dense_bytes)


def test_decoding_in_a_fresh_process_gives_the_evaluated_weights(run):
    code = (
        "import sys, vggtool.compress as c, vggtool.codec as k\n"
        "v = c.load_variant(sys.argv[1])\n"
        "print(k.state_sha256(v.model.state_dict()))\n"
    )
    for name in ("cluster-c8l5", "tuned"):
        out = subprocess.run([sys.executable, "-c", code, str(run / "variants" / name)], capture_output=True,
                             text=True, check=True).stdout.split()[-1]
        assert out == meta(run, name)["figures"]["weights_sha256"]


def test_the_chain_is_recorded_and_the_decoded_model_is_a_parent(run, home):
    tuned, int8 = meta(run, "tuned"), meta(run, "tuned-int8")
    assert [step["name"] for step in tuned["chain"]] == ["checkpoint", PRUNED]
    assert [step["name"] for step in int8["chain"]] == ["checkpoint", PRUNED, "tuned"]
    assert int8["chain"][-1]["path"].endswith("model.vdc")
    assert tuned["recipe"]["params"]["finetune_epochs"] == 1
    result = json.loads(invoke("evaluate", "--run-dir", str(run), "--variant", "tuned-int8", "--json").output)
    assert result["top1_err"] < 0.9


def test_registered_pipeline_builds_as_one_stacked_variant(trained_run, session_home, tmp_path):
    name = "prune-global-0.9-linearamount0.97-finetuneepochs5+cluster-c8l5"
    assert name in c.SETS["deep-compression"] and c.STACKS[name][0] in c.REGISTRY
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("variants", "results"))
    with in_home(session_home):
        invoke("compress", "--run-dir", str(run), "--variant", name)
    m = meta(run, name)
    assert m["recipe"]["type"] == "WeightSharing" and m["chain"][-1]["name"] == c.STACKS[name][0]
    assert m["figures"]["sparsity_conv"] == pytest.approx(0.9, abs=0.01)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("args, fragment", [
    (("--bits", "0"), "bits must be in 1..8"),
    (("--conv-bits", "9"), "bits must be in 1..8"),
    (("--bits", "4", "--linear-bits", "5"), "contradicts"),
    (("--from-variant", "static-int8-fused"), "only float variants can be a parent"),
])
def test_bad_options_are_one_line_errors_and_write_nothing(run, home, args, fragment):
    if "static-int8-fused" in args and not (run / "variants" / "static-int8-fused").exists():
        invoke("quantize", "--static", "--fuse", "--run-dir", str(run))
    before = sorted(p.name for p in (run / "variants").iterdir())
    one_line_error(invoke("cluster", "--run-dir", str(run), *args, "--name", "bad", ok=False), fragment)
    assert sorted(p.name for p in (run / "variants").iterdir()) == before


@pytest.mark.parametrize("recorded", [True, False], ids=["sha256 in meta", "folder without sha256"])
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_stored_file_is_a_one_line_error_naming_it(run, home, damage, recorded):
    folder = run / "variants" / "damaged"
    shutil.copytree(run / "variants" / "cluster-c8l5", folder, dirs_exist_ok=True)
    if not recorded:  # then the coded format's own checks must catch it
        m = json.loads((folder / "meta.json").read_text())
        del m["sha256"]
        (folder / "meta.json").write_text(json.dumps(m))
    data = bytearray((folder / "model.vdc").read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 100]
    else:
        data[len(data) // 2] ^= 0x10
    (folder / "model.vdc").write_bytes(bytes(data))
    try:
        one_line_error(invoke("evaluate", "--run-dir", str(run), "--variant", "damaged", ok=False),
                       "model.vdc", "sha256" if recorded else "corrupt")
    finally:
        shutil.rmtree(folder)
