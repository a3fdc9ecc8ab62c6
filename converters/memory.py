"""How much board memory a bundle needs at a context length, and the longest context each board size can hold.

Why: a bundle that loads on the host can still be killed by the OOM killer on a 2 GB K1 board, and what
grows with the context is llama.cpp's KV cache and its compute buffer, not the weights. The numbers come from
the text GGUF's header (shapes, types, hyperparameters; no tensor data is read) and the same arithmetic
llama.cpp uses when it allocates (read from llama-cpp-python 0.3.36's vendored llama.cpp: `src/llama-context.cpp`,
`llama-kv-cache.cpp`, `llama-memory-recurrent.cpp`, `llama-hparams.cpp`, `llama-graph.cpp`, `models/qwen35*.cpp`).
`tests/test_boards_memory.py` checks every term against what llama.cpp itself reports when it loads a file.

The terms, in bytes (see each function for its formula):
- weights: the GGUF's tensor data. llama.cpp maps the file and reads every weight while it works; on the
  board, SpacemiT's backend copies the quantised weights into its own repacked buffer and the mapped pages
  become reclaimable page cache. Either way the weights are resident once. The repacked copy has the same size
  for Q4_0 and Q8_0 and is 5% smaller for Q4_1 (ggml-spacemit/ime.cpp `get_repacked_block_type_size`); a Q6_K
  tensor (llama-quantize's Q4_K_M output layer, never written by smt-convert) is repacked as Q8_0, 30% larger,
  which this count does not add.
- kv_cache: exact (F16 by default, as llama.cpp).
- recurrent_state: exact (Qwen3.5's Gated-DeltaNet layers; F32).
- compute: llama.cpp's compute buffer, an estimate (ggml's allocator reuses memory between ops, so the size is
  the peak of live tensors over the graph; modelled as the largest of five phases, see compute_buffer_bytes).
- output: llama.cpp's output (logits) buffer as first reserved, exact.
- encoder: the ONNX encoder session's peak, passed in (measured elsewhere; the board runs the encoder
  before decoding but keeps its session, so it counts in full).
- overhead: RUNTIME_OVERHEAD_BYTES, a fixed allowance for code and bookkeeping (justified below).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from smt_convert.runtime.errors import SmtError, where
from smt_convert.runtime.gguf_model import GGUFModel

MiB = 1 << 20
GiB = 1 << 30

# llama.cpp defaults (common/common.h, llama_context_default_params): F16 K/V cache, physical batch 512.
DEFAULT_CACHE_TYPE = "f16"
DEFAULT_UBATCH = 512
# llama.cpp pads the context to a multiple of 256 (llama-context.cpp: `cparams.n_ctx = GGML_PAD(n_ctx, 256)`;
# per sequence too when the KV cache is not unified).
CTX_PAD = 256

# Context lengths `fits` tries, smallest first.
CONTEXTS = (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144)

# A fixed allowance for what no term above counts: the shared libraries' resident code and data (llama.cpp's
# libllama + libggml: importing llama-cpp-python, which loads them, adds 27 MiB RSS on this x86-64 host; ONNX
# Runtime's import adds 12 MiB), the vocabulary and chat-template structures, ggml's CPU work buffer
# (activations quantised for the matmuls: a few MiB at n_ubatch 512), thread stacks, the server's HTTP state,
# and allocator slack. Those measured pieces are about 40-50 MiB on x86-64; 128 MiB leaves room for the RISC-V
# builds, SpacemiT's execution provider and its arenas, which could not be measured here.
RUNTIME_OVERHEAD_BYTES = 128 * MiB

# Memory the board's Linux keeps for itself. A "4 GB" BPI-F3 shows 3809 MiB to Linux (hwloc on a 4 GB board,
# https://jauu.net/posts/2024-12-banana-pi-f3): ~0.3 GiB goes to firmware and reserved-memory carve-outs before
# the kernel starts. A headless Bianbu/Ubuntu image (systemd, journald, udev, network manager, sshd) uses a few
# hundred MiB more (not measured on a board here). 768 MiB covers both; a desktop image needs more: pass
# `os_reserve_bytes` to `fits`.
OS_RESERVE_BYTES = 768 * MiB

# Architectures whose attention projects a query gate alongside the query (Qwen3.5: q_proj is 2 x q, the gate
# stays alive until after attention): one more T x q activation in the attention phase.
_GATED_Q_ARCHS = {"qwen35", "qwen35moe", "qwen3next"}


@dataclass(frozen=True)
class TextShape:
    """What the memory arithmetic needs from a text GGUF (llama.cpp's hparams, under their GGUF names)."""

    arch: str
    n_layer: int  # block_count minus nextn (MTP) layers: the layers the main context runs
    n_layer_all: int  # block_count
    context_length: int  # {arch}.context_length (n_ctx_train)
    n_embd: int
    n_vocab: int
    n_head: int  # max over layers
    n_head_kv: tuple[int, ...]  # per layer (n_layer_all)
    key_length: int
    value_length: int
    n_ff: int  # dense FFN width (max over layers); 0 when every layer is MoE
    recurrent: tuple[bool, ...]  # per layer: a recurrent (Gated-DeltaNet) layer, no KV cache
    ssm_d_conv: int = 0
    ssm_d_inner: int = 0
    ssm_d_state: int = 0
    ssm_n_group: int = 0
    ssm_dt_rank: int = 0
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    n_ff_shexp: int = 0
    weights_bytes: int = 0

    @property
    def attention_layers(self) -> list[int]:
        """Layers that own a KV cache: the trunk's non-recurrent layers (the MTP layers get none in the main
        context: llama-model.cpp `create_memory`, `filter_attn = il < n_layer() && !is_recr(il)`)."""
        return [il for il in range(self.n_layer) if not self.recurrent[il]]

    @property
    def recurrent_layers(self) -> list[int]:
        return [il for il in range(self.n_layer) if self.recurrent[il]]

    @property
    def conv_channels(self) -> int:
        """Gated-DeltaNet conv channels: q, k (n_group x d_state each) and v (d_inner)."""
        return self.ssm_d_inner + 2 * self.ssm_n_group * self.ssm_d_state


def _per_layer(value, n: int, path, key) -> tuple[int, ...]:
    if isinstance(value, list):
        if len(value) != n:
            raise SmtError(f"{where(path, key)}: {len(value)} values for {n} layers")
        return tuple(int(v) for v in value)
    return (int(value),) * n


def read_text_shape(gguf_path: Path | str) -> TextShape:
    """The text GGUF's shape, from its header alone (`GGUFModel`: the file is mapped, no tensor is read, and the
    vocabulary strings are not decoded; gguf.GGUFReader would build a numpy view per token, ~300 MB for a real
    vocabulary). Keys as llama.cpp's loader reads them (llama-model.cpp `load_hparams`, models/qwen35*.cpp)."""
    g = GGUFModel(gguf_path)
    path = g.path

    def key(name, default=None):
        return g.meta("{arch}." + name) if default is None else g.meta("{arch}." + name, default)

    n_layer_all = int(key("block_count"))
    n_nextn = int(key("nextn_predict_layers", 0))
    n_layer = n_layer_all - n_nextn
    n_embd = int(key("embedding_length"))
    n_head_arr = _per_layer(key("attention.head_count"), n_layer_all, path, g.arch + ".attention.head_count")
    n_head = max(n_head_arr)
    n_head_kv = _per_layer(
        key("attention.head_count_kv", n_head_arr if len(set(n_head_arr)) > 1 else n_head),
        n_layer_all,
        path,
        g.arch + ".attention.head_count_kv",
    )
    # llama.cpp (llama-model.cpp load_hparams): key and value length each default to n_embd / n_head
    key_length = int(key("attention.key_length", n_embd // max(n_head, 1)))
    value_length = int(key("attention.value_length", n_embd // max(n_head, 1)))
    ff = key("feed_forward_length", 0)
    n_ff = max(ff) if isinstance(ff, list) else int(ff)

    recurrent = [False] * n_layer_all
    if g.has_meta("{arch}.ssm.conv_kernel") and n_layer > 0:
        if g.has_meta("{arch}.attention.recurrent_layers"):
            flags = key("attention.recurrent_layers")
            if len(flags) != n_layer_all:
                raise SmtError(
                    f"{where(path, g.arch + '.attention.recurrent_layers')}: {len(flags)} values for "
                    f"{n_layer_all} layers"
                )
            recurrent = [bool(f) for f in flags]
        else:  # llama.cpp's fallback: full attention every `full_attention_interval` layers (default 4)
            interval = int(key("full_attention_interval", 4))
            recurrent = [il < n_layer and (il + 1) % interval != 0 for il in range(n_layer_all)]

    vocab_tensor = "output.weight" if g.has("output.weight") else "token_embd.weight"
    n_vocab = int(g.tensor_shape(vocab_tensor)[0])
    weights = sum(int(g.raw(name)[0].nbytes) for name in g.tensor_names())

    ssm = {}
    if any(recurrent):
        ssm = dict(
            ssm_d_conv=int(key("ssm.conv_kernel")),
            ssm_d_inner=int(key("ssm.inner_size")),
            ssm_d_state=int(key("ssm.state_size")),
            ssm_n_group=int(key("ssm.group_count")),
            ssm_dt_rank=int(key("ssm.time_step_rank")),
        )
    ff_exp = key("expert_feed_forward_length", 0)
    return TextShape(
        arch=g.arch,
        n_layer=n_layer,
        n_layer_all=n_layer_all,
        context_length=int(key("context_length")),
        n_embd=n_embd,
        n_vocab=n_vocab,
        n_head=n_head,
        n_head_kv=n_head_kv,
        key_length=key_length,
        value_length=value_length,
        n_ff=n_ff,
        recurrent=tuple(recurrent),
        n_expert=int(key("expert_count", 0)),
        n_expert_used=int(key("expert_used_count", 0)),
        n_ff_exp=max(ff_exp) if isinstance(ff_exp, list) else int(ff_exp),
        n_ff_shexp=int(key("expert_shared_feed_forward_length", 0)),
        weights_bytes=weights,
        **ssm,
    )


def _shape(model: TextShape | Path | str) -> TextShape:
    return model if isinstance(model, TextShape) else read_text_shape(model)


def _row_bytes(type_name: str, n: int) -> int:
    """ggml_row_size: bytes of n elements of a ggml type (a quantised cache type stores whole blocks)."""
    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name.upper()]]
    except KeyError:
        raise SmtError(f"cache type {type_name!r}: not a ggml type") from None
    return n // block * size


def _pad(n: int, to: int) -> int:
    return -(-n // to) * to


def kv_cells(n_ctx: int, n_seq: int = 1, kv_unified: bool = False) -> tuple[int, int]:
    """(cells per stream, streams) as llama.cpp allocates them (llama-context.cpp): n_ctx is padded to 256;
    a unified cache is one stream of n_ctx cells, otherwise each of n_seq streams gets n_ctx / n_seq cells,
    padded to 256 again."""
    n_ctx = _pad(max(int(n_ctx), 1), CTX_PAD)
    if kv_unified or n_seq <= 1:
        return n_ctx, 1
    return _pad(n_ctx // n_seq, CTX_PAD), n_seq


def kv_cache_bytes(
    model,
    n_ctx: int,
    n_seq: int = 1,
    kv_unified: bool = False,
    type_k: str = DEFAULT_CACHE_TYPE,
    type_v: str = DEFAULT_CACHE_TYPE,
) -> int:
    """sum over attention layers of cells x streams x (row(K) + row(V)), with
    row(K) = n_head_kv x key_length and row(V) = n_head_kv x value_length elements of the cache type
    (llama-kv-cache.cpp: `ggml_new_tensor_3d(type_k, n_embd_k_gqa, kv_size, n_stream)`). Recurrent layers
    have none."""
    s = _shape(model)
    cells, streams = kv_cells(n_ctx, n_seq, kv_unified)
    total = 0
    for il in s.attention_layers:
        total += (
            cells
            * streams
            * (
                _row_bytes(type_k, s.n_head_kv[il] * s.key_length)
                + _row_bytes(type_v, s.n_head_kv[il] * s.value_length)
            )
        )
    return total


def recurrent_state_bytes(model, n_seq: int = 1) -> int:
    """Per recurrent layer and sequence, F32 (llama-memory-recurrent.cpp, rows = max(1, n_seq)):
    conv state n_embd_r = (d_conv - 1) x (d_inner + 2 x n_group x d_state) and
    ssm state n_embd_s = d_state x d_inner (= head_k_dim x head_v_dim x n_v_heads for Qwen3.5, whose
    head_k_dim = head_v_dim = d_state): llama_hparams::n_embd_r() / n_embd_s()."""
    s = _shape(model)
    if not s.recurrent_layers:
        return 0
    n_embd_r = max(s.ssm_d_conv - 1, 0) * s.conv_channels
    n_embd_s = s.ssm_d_state * s.ssm_d_inner
    return len(s.recurrent_layers) * max(1, n_seq) * (n_embd_r + n_embd_s) * 4


def output_buffer_bytes(model, n_seq: int = 1) -> int:
    """The logits buffer llama.cpp reserves at start (llama-context.cpp `output_reserve(n_seq_max)`): one row of
    n_vocab floats per sequence. It grows only when a caller asks for logits of many positions."""
    return _shape(model).n_vocab * 4 * max(1, n_seq)


def compute_buffer_bytes(
    model, n_ctx: int, n_seq: int = 1, n_ubatch: int = DEFAULT_UBATCH, flash_attn: bool = True, kv_unified: bool = False
) -> int:
    """Estimate of llama.cpp's compute buffer (`sched_reserve`): the worst-case graph is reserved for
    T = min(n_ctx, n_ubatch) tokens with T output rows (n_outputs_max = n_batch), and ggml's allocator frees a
    tensor after its last use, so the buffer is the peak of tensors alive at once. With f = 4 bytes (F32
    activations), E = n_embd, q = n_head x key_length, kv = n_head_kv x key_length, and n_kv = the KV cells a
    token sees (the padded n_ctx; n_ctx / n_seq per stream when the cache is not unified), five phases:

      mask      = T x n_kv x (2 with flash attention: an F16 mask; else 4), alive across the attention layers
      attention = mask + (flash attention off: scores T x n_kv x n_head x f) + T x f x (3E + 2q + 2kv [+ q gate])
      ffn       = mask + T x f x (4E + 3 n_ff)      (MoE: 4E + n_expert + n_used x 3 n_ff_exp + 3 n_ff_shexp)
      recurrent = mask + T x f x (3 conv_channels + d_inner + E) + 2 x n_seq x n_embd_s x f   (Gated-DeltaNet)
      output    = logits T x n_vocab x f + mask + T x f x (5E with flash attention, else 3E)

    compute = the largest. With flash attention off the scores (T x n_ctx x n_head x 4) dominate long contexts,
    otherwise the logits (T x n_vocab x 4) usually do: 297 MiB for Qwen3-ASR's 151936 tokens at T = 512. The
    T x f x (...) terms are the activations each phase keeps (residual, normed input, projections and their
    rope/norm copies), fitted to llama.cpp's own figures on models where each phase dominates in turn. Measured
    (tests/test_boards_memory.py): never more than 0.7% below llama.cpp, and above it by at most the mask plus
    3 T x E floats, because ggml's allocator sometimes reuses the mask's hole for the logits, which the estimate
    does not assume (-0.7% ... +13% at Qwen3-ASR-0.6B widths; within 0.2% where the scores dominate). The
    MoE phase was checked on one tiny qwen35moe model only: -7.4% ... +20%."""
    s = _shape(model)
    cells, streams = kv_cells(n_ctx, n_seq, kv_unified)
    n_kv = cells  # each token attends to its own stream's cells
    T = min(cells * streams, n_ubatch)
    f = 4
    E = s.n_embd
    has_attn = bool(s.attention_layers)
    mask = T * n_kv * (2 if flash_attn else 4) if has_attn else 0
    phases = []
    if has_attn:
        q = s.n_head * s.key_length
        kv = max(s.n_head_kv) * s.key_length
        scores = 0 if flash_attn else T * n_kv * s.n_head * f
        gate = q if s.arch in _GATED_Q_ARCHS else 0
        phases.append(mask + scores + T * f * (3 * E + 2 * q + 2 * kv + gate))
    if s.n_expert:
        phases.append(mask + T * f * (4 * E + s.n_expert + s.n_expert_used * 3 * s.n_ff_exp + 3 * s.n_ff_shexp))
    if s.n_ff:
        phases.append(mask + T * f * (4 * E + 3 * s.n_ff))
    if s.recurrent_layers:
        phases.append(
            mask
            + T * f * (3 * s.conv_channels + s.ssm_d_inner + E)
            + 2 * max(1, n_seq) * s.ssm_d_state * s.ssm_d_inner * f
        )
    phases.append(T * s.n_vocab * f + T * f * (5 if flash_attn else 3) * E + mask)
    return max(phases)


@dataclass(frozen=True)
class MemoryBudget:
    """Bytes a bundle holds on the board at one context length (`total` is what must fit beside the OS)."""

    n_ctx: int  # as llama.cpp allocates it (padded to 256)
    n_seq: int
    weights: int
    kv_cache: int
    recurrent_state: int
    compute: int
    output: int
    encoder: int
    overhead: int

    @property
    def total(self) -> int:
        return (
            self.weights
            + self.kv_cache
            + self.recurrent_state
            + self.compute
            + self.output
            + self.encoder
            + self.overhead
        )


def text_memory(
    gguf_path,
    n_ctx: int,
    n_seq: int = 1,
    *,
    encoder_peak_bytes: int = 0,
    flash_attn: bool = True,
    n_ubatch: int = DEFAULT_UBATCH,
    kv_unified: bool = False,
    cache_type: str = DEFAULT_CACHE_TYPE,
    overhead_bytes: int = RUNTIME_OVERHEAD_BYTES,
) -> MemoryBudget:
    """The memory a bundle needs at `n_ctx` (total over `n_seq` parallel sequences, as llama.cpp's -c).
    `gguf_path` may also be a `TextShape` already read. flash_attn defaults to on: llama.cpp's default
    (`-fa auto`) turns it on when the CPU backend runs the layers, which is the board's case (SpacemiT's own
    benchmarks run with fa=1); pass False for `-fa off` (or llama-cpp-python's `Llama`, whose default is off)."""
    s = _shape(gguf_path)
    cells, streams = kv_cells(n_ctx, n_seq, kv_unified)
    return MemoryBudget(
        n_ctx=cells * streams,
        n_seq=max(1, n_seq),
        weights=s.weights_bytes,
        kv_cache=kv_cache_bytes(s, n_ctx, n_seq, kv_unified, cache_type, cache_type),
        recurrent_state=recurrent_state_bytes(s, n_seq),
        compute=compute_buffer_bytes(s, n_ctx, n_seq, n_ubatch, flash_attn, kv_unified),
        output=output_buffer_bytes(s, n_seq),
        encoder=int(encoder_peak_bytes),
        overhead=int(overhead_bytes),
    )


def fits(
    budget_bytes_fn: Callable[[int], int],
    board_sizes_gb: Iterable[float],
    *,
    max_ctx: int | None = None,
    contexts: Iterable[int] = CONTEXTS,
    os_reserve_bytes: int = OS_RESERVE_BYTES,
) -> dict[float, int | None]:
    """For each board memory size (GB as sold: LPDDR is sized in GiB), the largest context in `contexts`
    (up to `max_ctx`, e.g. the model's context_length) whose `budget_bytes_fn(n_ctx)` fits in the board's memory
    minus `os_reserve_bytes`; None when not even the smallest fits. The budget grows with n_ctx, so the search
    stops at the first context that does not fit."""
    candidates = sorted(c for c in contexts if max_ctx is None or c <= max_ctx)
    budgets: dict[int, int] = {}
    result: dict[float, int | None] = {}
    for gb in board_sizes_gb:
        usable = int(gb * GiB) - os_reserve_bytes
        best = None
        for n_ctx in candidates:
            if n_ctx not in budgets:
                budgets[n_ctx] = int(budget_bytes_fn(n_ctx))
            if budgets[n_ctx] > usable:
                break
            best = n_ctx
        result[gb] = best
    return result


def bundle_fits(
    gguf_path,
    board_sizes_gb: Iterable[float],
    *,
    encoder_peak_bytes: int = 0,
    n_seq: int = 1,
    os_reserve_bytes: int = OS_RESERVE_BYTES,
    **options,
) -> dict[float, int | None]:
    """`fits` for one text GGUF (read once), contexts up to its context_length; `options` go to `text_memory`."""
    s = read_text_shape(gguf_path)
    return fits(
        lambda n: text_memory(s, n, n_seq, encoder_peak_bytes=encoder_peak_bytes, **options).total,
        board_sizes_gb,
        max_ctx=s.context_length,
        os_reserve_bytes=os_reserve_bytes,
    )


# The board memory sizes a bundle's statement covers: every size K1 and K3 boards are sold with (boards.py).
BOARD_SIZES_GB = (2, 4, 8, 16, 32)
DEFAULT_CONTEXT = 4096  # the `-c` a bundle's board commands carry unless a board profile or --context says less
ASSUMPTIONS = (
    "llama.cpp defaults: F16 KV cache, n_ubatch 512, flash attention on (as -fa auto on the CPU "
    "backend), one sequence; the encoder session's peak as measured at conversion; "
    f"{OS_RESERVE_BYTES // MiB} MiB kept for the board's Linux"
)


def choose_context(
    gguf_path, encoder_peak_bytes: int, requested: int | None, board_sizes_gb: tuple[float, ...] = ()
) -> int:
    """The `-c` the bundle documents: `requested` (capped by the model's context_length); without one,
    DEFAULT_CONTEXT, or with a board profile the largest context up to DEFAULT_CONTEXT that fits its largest
    memory size (a 2 GB-only board gets what fits there). `gguf_path` may be a TextShape already read."""
    s = _shape(gguf_path)
    if requested is not None:
        return min(requested, s.context_length)
    ceiling = min(DEFAULT_CONTEXT, s.context_length)
    if not board_sizes_gb:
        return ceiling
    best = fits(
        lambda n: text_memory(s, n, encoder_peak_bytes=encoder_peak_bytes).total, [max(board_sizes_gb)], max_ctx=ceiling
    )[max(board_sizes_gb)]
    return best or min(CONTEXTS)


def memory_record(gguf_path, n_ctx: int, encoder_peak_bytes: int) -> dict:
    """The manifest's `memory`: the budget at the bundle's `-c`, which board sizes hold it, and the longest
    context each size holds (card and `inspect` print it; nothing is loaded to compute it). `gguf_path` may be a
    TextShape already read."""
    s = _shape(gguf_path)
    budget = text_memory(s, n_ctx, encoder_peak_bytes=encoder_peak_bytes)
    usable = {gb: int(gb * GiB) - OS_RESERVE_BYTES for gb in BOARD_SIZES_GB}
    longest = fits(
        lambda n: text_memory(s, n, encoder_peak_bytes=encoder_peak_bytes).total,
        BOARD_SIZES_GB,
        max_ctx=s.context_length,
    )
    return {
        "n_ctx": n_ctx,
        "allocated_ctx": budget.n_ctx,
        "context_length": s.context_length,
        "bytes": {
            "weights": budget.weights,
            "kv_cache": budget.kv_cache,
            "recurrent_state": budget.recurrent_state,
            "compute": budget.compute,
            "output": budget.output,
            "encoder": budget.encoder,
            "overhead": budget.overhead,
            "total": budget.total,
        },
        "os_reserve_bytes": OS_RESERVE_BYTES,
        "fits_at_n_ctx": [gb for gb in BOARD_SIZES_GB if budget.total <= usable[gb]],
        "longest_context": {str(gb): ctx for gb, ctx in longest.items()},
        "assumptions": ASSUMPTIONS,
    }
