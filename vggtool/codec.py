"""The Deep Compression container: weight-shared tensors as codebooks, indices and
sparse positions, entropy-coded; everything else raw. Nothing pickled.

Layout of a `.vdc` file::

    MAGIC (8 bytes) | header length (8 bytes, little endian) | header (JSON) | sha256 of the header | payload

The header lists every tensor of the state_dict in order, with its shape and
dtype and where its streams lie in the payload, plus the payload's sha256. A
weight-shared tensor (at most 2^bits distinct non-zero values) is stored as

- `codebook`: its distinct non-zero values, float32, sorted;
- `index`: each non-zero weight's codebook entry;
- `gaps`: the positions of the non-zero weights as relative indices (the
  paper's scheme): each gap to the previous non-zero, as a byte, 255 meaning
  "255 more, continued in the next byte";

`index` and `gaps` Huffman-coded (canonical codes, the code lengths stored in
front of each stream), the codebook and the other tensors (biases, BatchNorm)
as raw bytes compressed with xz. Zeros, the pruned weights, are not stored at
all: they come back as exact zeros.

Why Huffman written here: on VGG19-BN's index and gap streams a Huffman code
came to 2.7% fewer bytes than xz (LZMA2); each build records `xz_streams_bytes`,
what xz would have taken. The maintained pure-Python `dahuffman` decodes bit by
bit in Python (seconds per million symbols in a one-off check), where the numpy
decoder below jumps along the code chain in blocks. The header's sha256 and
the code checks make a damaged file an error, never a different model.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import lzma
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from vggtool.errors import VggtoolError
from vggtool.files import write_bytes

MAGIC = b"VGGDC\x00\x01\n"
MAX_BITS = 8
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64, "int64": torch.int64,
           "int32": torch.int32, "uint8": torch.uint8, "bool": torch.bool}


def _dtype_name(t: torch.Tensor) -> str:
    name = str(t.dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise VggtoolError(f"the coded format cannot store {name} tensors")
    return name


def _xz(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=6)


def gaps_encode(positions: np.ndarray) -> np.ndarray:
    """Sorted flat positions -> relative indices as bytes (255 = add 255, go on)."""
    d = np.diff(np.concatenate([[-1], positions.astype(np.int64)])) - 1  # zeros skipped before each non-zero
    full, rest = d // 255, d % 255
    counts = full + 1
    out = np.full(int(counts.sum()), 255, dtype=np.uint8)
    out[np.cumsum(counts) - 1] = rest
    return out


def gaps_decode(stream: np.ndarray, count: int, numel: int, what: str) -> np.ndarray:
    ends = np.flatnonzero(stream != 255)
    if len(ends) != count or (len(stream) and stream[-1] == 255):
        raise VggtoolError(f"{what} is corrupt: its positions do not match its header")
    runs = np.diff(np.concatenate([[-1], ends])) - 1  # continuation bytes before each end
    d = stream[ends].astype(np.int64) + 255 * runs
    positions = np.cumsum(d + 1) - 1
    if count and positions[-1] >= numel:
        raise VggtoolError(f"{what} is corrupt: a position lies outside its tensor")
    return positions


MAX_CODE_BITS = 24  # longer Huffman codes are avoided by flattening the frequencies
JUMP = 256  # decoding follows the code chain in blocks of this many symbols


def code_lengths(freq: np.ndarray) -> np.ndarray:
    """Huffman code lengths for byte symbols of these frequencies (0 where unused),
    at most MAX_CODE_BITS long."""
    freq = np.asarray(freq, dtype=np.int64)
    while True:
        lengths = np.zeros(len(freq), dtype=np.int64)
        used = [int(s) for s in np.flatnonzero(freq)]
        if len(used) == 1:
            lengths[used[0]] = 1
            return lengths
        heap = [(int(freq[s]), i, [s]) for i, s in enumerate(used)]
        heapq.heapify(heap)
        tie = len(heap)
        while len(heap) > 1:
            fa, _, a = heapq.heappop(heap)
            fb, _, b = heapq.heappop(heap)
            for s in a + b:  # every symbol below a merge is one bit longer
                lengths[s] += 1
            heapq.heappush(heap, (fa + fb, tie, a + b))
            tie += 1
        if lengths.max() <= MAX_CODE_BITS:
            return lengths
        freq = np.where(freq > 0, (freq >> 1) | 1, 0)  # flatten and retry: shorter longest code


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical Huffman codes from code lengths (symbols ordered by length, then value)."""
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, prev = 0, 0
    for s in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - prev
        codes[s] = code
        code, prev = code + 1, int(lengths[s])
    return codes


def huffman_bits(symbols: np.ndarray) -> int:
    """Bits of the Huffman code of these byte symbols (the code lengths' sum, no table)."""
    freq = np.bincount(symbols, minlength=256)
    return int((freq * code_lengths(freq)).sum()) if len(symbols) else 0


def huffman_encode(symbols: np.ndarray) -> tuple[bytes, int]:
    """Byte symbols -> (code lengths of symbols 0..max, then the packed code bits; number of bits)."""
    symbols = np.asarray(symbols, dtype=np.uint8)
    if not len(symbols):
        return b"", 0
    lengths = code_lengths(np.bincount(symbols, minlength=256))
    codes = canonical_codes(lengths)
    ln, cd = lengths[symbols], codes[symbols]
    ends = np.cumsum(ln)
    starts, total = ends - ln, int(ends[-1])
    bits = np.zeros(total, dtype=np.uint8)
    for j in range(int(ln.max())):  # bit j of every code at once, most significant first
        sel = ln > j
        bits[starts[sel] + j] = (cd[sel] >> (ln[sel] - 1 - j)) & 1
    table = lengths[: int(symbols.max()) + 1].astype(np.uint8)
    return len(table).to_bytes(2, "little") + table.tobytes() + np.packbits(bits).tobytes(), total


def huffman_decode(data: bytes, count: int, total: int, what: str) -> np.ndarray:
    """The inverse of `huffman_encode`: `count` symbols from `total` code bits."""
    if count == 0:
        return np.zeros(0, dtype=np.uint8)
    try:
        n = int.from_bytes(data[:2], "little")
        lengths = np.frombuffer(data[2 : 2 + n], dtype=np.uint8).astype(np.int64)
        packed = np.frombuffer(data[2 + n :], dtype=np.uint8)
        if len(lengths) != n or not 0 < n <= 256 or lengths.max() > MAX_CODE_BITS or len(packed) != (total + 7) // 8:
            raise ValueError("stream sizes do not match")
        if ((2.0 ** -lengths[lengths > 0]).sum()) > 1:
            raise ValueError("not a prefix code")
    except ValueError as e:
        raise VggtoolError(f"{what} is corrupt ({e})") from None
    codes, m = canonical_codes(lengths), int(lengths.max())
    table_sym = np.zeros(1 << m, dtype=np.uint8)
    table_len = np.zeros(1 << m, dtype=np.int32)  # 0: no code starts with these bits
    for s in np.flatnonzero(lengths):
        lo = int(codes[s]) << (m - int(lengths[s]))
        hi = (int(codes[s]) + 1) << (m - int(lengths[s]))
        table_sym[lo:hi], table_len[lo:hi] = s, lengths[s]
    word = np.concatenate([packed, np.zeros(4, dtype=np.uint8)]).astype(np.uint32)
    word = (word[:-3] << 24) | (word[1:-2] << 16) | (word[2:-1] << 8) | word[3:]  # 32 bits from every byte
    offsets = np.arange(total, dtype=np.int64)
    window = ((word[offsets >> 3] << (offsets & 7).astype(np.uint32)) >> np.uint32(32 - m)).astype(np.int32)
    step = table_len[window]
    index = np.int32 if total < 2**31 - 2**25 else np.int64
    nxt = np.minimum(offsets.astype(index) + np.where(step > 0, step, total + 1).astype(index), total)
    nxt = np.append(nxt, total)  # offset `total`: the end, where the chain stays
    jump = nxt
    for _ in range(JUMP.bit_length() - 1):  # JUMP symbols ahead from every offset
        jump = jump[jump]
    blocks = -(-count // JUMP)
    starts = np.zeros(blocks, dtype=index)
    for b in range(1, blocks):
        starts[b] = jump[starts[b - 1]]
    rows = [starts]
    for _ in range(JUMP - 1):
        rows.append(nxt[rows[-1]])
    positions = np.stack(rows, axis=1).reshape(-1)[:count]
    if (positions >= total).any() or (step[positions] == 0).any() or nxt[positions[-1]] != total:
        raise VggtoolError(f"{what} is corrupt (its code bits do not decode to {count} symbols)")
    return table_sym[window[positions]]


def shared_values(t: torch.Tensor) -> torch.Tensor:
    """The distinct non-zero values of a tensor, sorted."""
    flat = t.detach().reshape(-1)
    return torch.unique(flat[flat != 0])


def encode(state: dict, bits: dict[str, int], meta: dict | None = None) -> tuple[bytes, dict]:
    """A state_dict as container bytes; `bits` names the weight-shared tensors and their
    index width. Returns (bytes, figures: stream sizes and the Huffman comparison)."""
    tensors, chunks, offset = [], [], 0
    figures = {"index_bytes": 0, "gaps_bytes": 0, "codebook_bytes": 0, "raw_bytes": 0, "xz_streams_bytes": 0,
               "shared_nonzero": 0}

    def put(kind: str, data: bytes, coded: bytes | None = None) -> list[int]:
        nonlocal offset
        packed = _xz(data) if coded is None else coded
        chunks.append(packed)
        figures[f"{kind}_bytes"] += len(packed)
        offset += len(packed)
        return [offset - len(packed), len(packed)]

    for name, t in state.items():
        if not isinstance(t, torch.Tensor) or t.is_quantized:
            raise VggtoolError(f"the coded format stores plain tensors only; {name} is not one")
        t = t.detach().cpu().contiguous()
        entry = {"name": name, "shape": list(t.shape), "dtype": _dtype_name(t)}
        if name in bits:
            b = bits[name]
            if not 1 <= b <= MAX_BITS:
                raise VggtoolError(f"index width must be 1..{MAX_BITS} bits, got {b} for {name}")
            flat = t.reshape(-1).float()
            positions = torch.nonzero(flat != 0).reshape(-1).numpy()
            book, index = torch.unique(flat[positions], sorted=True, return_inverse=True)
            if len(book) > 2**b:
                raise VggtoolError(f"{name} has {len(book)} distinct non-zero values, more than 2^{b}: "
                                   "it is not weight-shared")
            idx = index.numpy().astype(np.uint8)
            gaps = gaps_encode(positions)
            (idx_code, idx_bits), (gap_code, gap_bits) = huffman_encode(idx), huffman_encode(gaps)
            figures["xz_streams_bytes"] += len(_xz(idx.tobytes())) + len(_xz(gaps.tobytes()))  # the alternative
            figures["shared_nonzero"] += len(idx)
            entry.update(kind="shared", bits=b, nonzero=len(idx), index_bits=idx_bits, gaps_symbols=len(gaps),
                         gaps_bits=gap_bits, codebook=put("codebook", book.numpy().tobytes()),
                         index=put("index", b"", idx_code), gaps=put("gaps", b"", gap_code))
        else:
            raw = t.numpy().tobytes() if t.dtype != torch.bool else t.to(torch.uint8).numpy().tobytes()
            entry.update(kind="raw", raw=put("raw", raw))
        tensors.append(entry)
    payload = b"".join(chunks)
    header = {"format": 1, "codec": "huffman+xz", "tensors": tensors, "meta": meta or {},
              "payload_bytes": len(payload), "payload_sha256": hashlib.sha256(payload).hexdigest()}
    head = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + len(head).to_bytes(8, "little") + head + hashlib.sha256(head).digest() + payload, figures


def save(path: Path, state: dict, bits: dict[str, int], meta: dict | None = None) -> dict:
    data, figures = encode(state, bits, meta)
    write_bytes(path, data)
    return figures


def _stream(payload: bytes, where, what: str, xz: bool = True) -> bytes:
    try:
        start, length = (int(v) for v in where)
        if start < 0 or length < 0 or start + length > len(payload):
            raise ValueError("outside the payload")
        chunk = payload[start : start + length]
        return lzma.decompress(chunk, format=lzma.FORMAT_XZ) if xz else chunk
    except (lzma.LZMAError, ValueError, TypeError) as e:
        raise VggtoolError(f"{what} is corrupt ({e})") from None


def decode(data: bytes, what: str) -> tuple[dict, dict]:
    """Container bytes -> (state_dict of dense tensors, the meta stored with it).
    Any damage is a one-line error; a damaged file never yields a model."""
    if data[: len(MAGIC)] != MAGIC:
        raise VggtoolError(f"{what} is not a vggtool coded model (wrong magic bytes)")
    try:
        n = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 8], "little")
        start = len(MAGIC) + 8
        if n <= 0 or start + n + 32 > len(data):
            raise ValueError("header length out of range: truncated?")
        head = data[start : start + n]
        if hashlib.sha256(head).digest() != data[start + n : start + n + 32]:
            raise ValueError("header sha256 mismatch")
        header = json.loads(head)
        payload = data[start + n + 32 :]
        if len(payload) != header["payload_bytes"]:
            raise ValueError(f"payload is {len(payload)} bytes, the header says {header['payload_bytes']}: truncated?")
        if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
            raise ValueError("payload sha256 mismatch")
        entries = header["tensors"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise VggtoolError(f"{what} is corrupt ({e})") from None
    state = OrderedDict()
    for e in entries:
        try:
            name, shape, dtype = e["name"], [int(s) for s in e["shape"]], _DTYPES[e["dtype"]]
            numel = int(np.prod(shape)) if shape else 1
            if e["kind"] == "shared":
                book = np.frombuffer(_stream(payload, e["codebook"], what), dtype=np.float32)
                idx = huffman_decode(_stream(payload, e["index"], what, xz=False), int(e["nonzero"]),
                                     int(e["index_bits"]), what)
                gaps = huffman_decode(_stream(payload, e["gaps"], what, xz=False), int(e["gaps_symbols"]),
                                      int(e["gaps_bits"]), what)
                if len(idx) != e["nonzero"] or (len(idx) and idx.max() >= len(book)) or len(book) > 2 ** e["bits"]:
                    raise ValueError(f"{name}: indices do not match the codebook")
                flat = np.zeros(numel, dtype=np.float32)
                flat[gaps_decode(gaps, len(idx), numel, what)] = book[idx]
                state[name] = torch.from_numpy(flat).reshape(shape).to(dtype)
            elif e["kind"] == "raw":
                raw = _stream(payload, e["raw"], what)
                np_dtype = np.uint8 if dtype == torch.bool else torch.empty(0, dtype=dtype).numpy().dtype
                arr = np.frombuffer(raw, dtype=np_dtype)
                if arr.size != numel:
                    raise ValueError(f"{name} holds {arr.size} values, its shape {shape} needs {numel}")
                state[name] = torch.from_numpy(arr.copy()).reshape(shape).to(dtype)
            else:
                raise ValueError(f"unknown tensor kind {e['kind']!r}")
        except (KeyError, TypeError, ValueError) as err:
            raise VggtoolError(f"{what} is corrupt ({err})") from None
    return state, header.get("meta", {})


def load(path: Path) -> tuple[dict, dict]:
    path = Path(path)
    if not path.is_file():
        raise VggtoolError(f"coded model {path} does not exist")
    return decode(path.read_bytes(), f"coded model {path}")


def state_sha256(state: dict) -> str:
    """A digest of a state_dict's names, shapes, dtypes and values (checkpoint's tensor digest,
    without metadata): equal digests, identical weights."""
    from vggtool.checkpoint import tensors_sha256

    return tensors_sha256(state, "")
