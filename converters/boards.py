"""The boards a bundle is made for, as one small table of facts with their sources.

Why: choosing a text type, encoder dtype, thread counts and context length depends on the board (which ggml
types SpacemiT's llama.cpp backend runs on the matrix extension, how many cores have it, how much memory the
board was sold with). Keeping those facts in one place, each with where it was read, lets the CLI, the card
and `converters/memory.py` agree, and lets a reader check them. Where a fact could not be found it says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGMLQuantizationType

# The `ep_config` keys the board runtime passes to SpacemiT's ONNX Runtime execution provider
# (shared/reference/SMT-CONTRACT.md, "The config directory").
EP_INTRA_THREADS = "SPACEMIT_EP_INTRA_THREAD_NUM"
EP_INTER_THREADS = "SPACEMIT_EP_INTER_THREAD_NUM"
EP_AFFINITY = "SPACEMIT_EP_INTRA_THREAD_AFFINITY"


@dataclass(frozen=True)
class BoardProfile:
    """Facts about one board. `accelerated_types` None means every ggml type (no matrix engine: the host's
    CPU backend has SIMD kernels for all of them)."""

    name: str
    soc: str
    cores: int | None  # CPU cores Linux sees (None: whatever the machine has)
    ai_cores: tuple[int, ...]  # CPU ids with SpacemiT's matrix extension (IME); () when none
    llama_threads: int | None  # llama.cpp -t on the board (None: llama.cpp's default)
    ort_intra_threads: int | None  # SPACEMIT_EP_INTRA_THREAD_NUM (None: ONNX Runtime's default)
    memory_gb: tuple[int, ...]  # memory sizes the board is sold with (GB as sold, = GiB of LPDDR)
    accelerated_types: frozenset[str] | None
    default_text_type: str  # smt-convert --outtype a user would pick there
    encoder_dtype: str  # smt-convert --onnx-dtype for audio encoders as SpacemiT ships them
    vision_encoder_dtype: str  # the same for vision encoders

    def ep_config(self) -> dict[str, str]:
        """`ep_config` for the bundle's config.json: the execution provider's intra-op threads, pinned to the
        matrix-extension cores, one inter-op thread (the encoders are one sequential graph). Empty on the host.
        SpacemiT's ORT documentation: set SPACEMIT_EP_INTRA_THREAD_NUM explicitly, because with only ORT's
        intra_op_num_threads the EP starts 2 x that many compute threads."""
        if self.ort_intra_threads is None:
            return {}
        config = {EP_INTRA_THREADS: str(self.ort_intra_threads), EP_INTER_THREADS: "1"}
        if self.ai_cores:
            config[EP_AFFINITY] = ";".join(str(c) for c in self.ai_cores[: self.ort_intra_threads])
        return config


# Sources (read 2026; stored public copies):
#  [fork]   spacemit-com/llama.cpp docs/build-riscv64-spacemit.md, "Quantization Support For Matrix":
#           X60 (K1): Q4_0, Q4_1, Q4_K; A100 (K3's AI cores): Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K,
#           Q8_0. Its performance tables run X60 with 4 threads and A100 with 8 (Q4_0 qwen3, Q4_1 qwen35).
#  [ime]    spacemit-com/llama.cpp ggml/src/ggml-spacemit/ime.cpp (commit 42194def): IME1 kernels (K1's X60,
#           also K3's X100) only for Q4_0/Q4_1/Q4_K; IME2 (A100) dispatches Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_1,
#           Q5_K, Q6_K, Q8_0 in `compute_forward`. Q5_0 has an IME2 GEMM branch but is not in that dispatch
#           list at this commit; the table below follows the documentation ([fork]), which lists it.
#  [k1dt]   SpacemiT K1 device trees (k1-x_*.dts): `cpu-ai = "true"` on cpu 0-3 only; Milk-V Jupiter roofline
#           (book.j4orz.ai): "IME ... only available on Cluster 0 (cores 0-3)".
#  [bpif3]  postmarketOS wiki, Banana Pi BPI-F3: 2 / 4 / 8 / 16 GB LPDDR4X. Other K1 boards fall in the same
#           set: Lichee Pi 3A 8/16 GB (ruyisdk/support-matrix), Bit-Brick K1 2/4/8 GB. Milk-V Jupiter's own list
#           was not found in the sources searched; the K1 datasheet allows up to 16 GB LPDDR4X.
#  [k3]     SpacemiT K3-CoM260 developer kit specification (spacemit.com, copied in
#           sanderjo/SpacemiT-K3-X100-A100 specs-k3-com260.md): 8 X100 + 8 A100 cores, 32 GB LPDDR5; the chip
#           "supports up to 32GB". X100 are cpu 0-7, A100 cpu 8-15 (bruno.verachten.fr, K3 llama.cpp benchmark).
#           Smaller K3 memory options were not found.
#  [ortaff] a K3 application using SpacemiT's EP: SPACEMIT_EP_INTRA_THREAD_NUM 8 with
#           SPACEMIT_EP_INTRA_THREAD_AFFINITY "8;9;10;11;12;13;14;15" (the A100 cores), INTER_THREAD_NUM 1.
#           No K1 setting was published in the sources; 4 threads on cores 0-3 follows [k1dt].
#  [ship]   SpacemiT's Qwen3-ASR bundle `qwen3-asr-0.6B-dynq-q40`: text Q4_0, encoders `*.dynq.onnx` (int8
#           dynamic quantisation); their Qwen3.5 vision encoder `qwen3_5vl_0.8b-vision-384.fp16.onnx`
#           (SMT-CONTRACT.md). No K3-specific bundle was found, so K3 uses the same encoder dtypes.
BOARDS: dict[str, BoardProfile] = {
    "k1": BoardProfile(
        name="k1",
        soc="SpacemiT K1 (8 x X60, RVV 1.0 VLEN 256; IME on cluster 0)",
        cores=8,
        ai_cores=(0, 1, 2, 3),
        llama_threads=4,
        ort_intra_threads=4,  # [k1dt] [fork]
        memory_gb=(2, 4, 8, 16),  # [bpif3]
        accelerated_types=frozenset({"Q4_0", "Q4_1", "Q4_K"}),  # [fork] [ime]
        # Q4_0: accelerated and what SpacemiT ships [ship]; Q4_K_M is the other common pick, but gguf-py
        # (hence smt-convert) cannot write K-quants.
        default_text_type="q4_0",
        encoder_dtype="int8",
        vision_encoder_dtype="fp16",  # [ship]
    ),
    "k3": BoardProfile(
        name="k3",
        soc="SpacemiT K3 (8 x X100 + 8 x A100 AI cores, IME2 on the A100)",
        cores=16,
        ai_cores=(8, 9, 10, 11, 12, 13, 14, 15),
        llama_threads=8,
        ort_intra_threads=8,  # [k3] [ortaff]
        memory_gb=(32,),  # [k3]
        accelerated_types=frozenset(
            {"Q2_K", "Q3_K", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0"}
        ),  # [fork]
        # Q4_0: SpacemiT's own K3 benchmarks use it [fork]; decoding is memory-bound, so half the bytes of
        # Q8_0 (also accelerated here, the choice when accuracy matters more than speed).
        default_text_type="q4_0",
        encoder_dtype="int8",
        vision_encoder_dtype="fp16",  # [ship]
    ),
    # The host runs the same files for testing and verification; nothing limits the choice, so the near-lossless
    # defaults (README "Verification thresholds": q8_0 NMSE ~2e-4) and fp32 encoders.
    "host": BoardProfile(
        name="host",
        soc="the machine smt-convert runs on (x86-64 or arm64)",
        cores=None,
        ai_cores=(),
        llama_threads=None,
        ort_intra_threads=None,
        memory_gb=(),
        accelerated_types=None,
        default_text_type="q8_0",
        encoder_dtype="fp32",
        vision_encoder_dtype="fp32",
    ),
}


def profile(name: str) -> BoardProfile:
    """The board called `name` ("k1", "k3", "host"; case-insensitive)."""
    try:
        return BOARDS[name.lower()]
    except KeyError:
        raise KeyError(f"unknown board {name!r}: one of {', '.join(BOARDS)}") from None


def accelerated(board: str | BoardProfile, ggml_type_name: str) -> bool:
    """Whether llama.cpp runs matrix products with weights of this ggml type (e.g. "Q4_0", "q8_0") on the
    board's matrix extension. Other types still run, on the plain vector path. A name that is no ggml type
    (a llama-quantize file type such as "Q4_K_M" mixes several) raises ValueError."""
    b = board if isinstance(board, BoardProfile) else profile(board)
    name = ggml_type_name.upper()
    if name not in GGMLQuantizationType.__members__:
        raise ValueError(f"{ggml_type_name!r} is not a ggml type name (e.g. Q4_0, Q4_K, Q8_0, F16)")
    return b.accelerated_types is None or name in b.accelerated_types


# The ggml type that carries most of a llama-quantize preset's weights (its matrices; llama.cpp's
# `llama_tensor_get_type` raises a few, e.g. the output projection, to a higher type).
PRESET_MAIN_TYPE = {
    "q2_k": "Q2_K",
    "q3_k_s": "Q3_K",
    "q3_k_m": "Q3_K",
    "q3_k_l": "Q3_K",
    "q4_k_s": "Q4_K",
    "q4_k_m": "Q4_K",
    "q5_k_s": "Q5_K",
    "q5_k_m": "Q5_K",
    "q6_k": "Q6_K",
}


def main_type(outtype: str) -> str:
    """The ggml type of most matrices for an --outtype (q4_k_m -> Q4_K, q8_0 -> Q8_0)."""
    return PRESET_MAIN_TYPE.get(outtype, outtype.upper())


@dataclass(frozen=True)
class Choice:
    """The types a conversion uses, where each came from, and what the user should know."""

    outtype: str
    onnx_dtype: str
    board: BoardProfile | None
    warnings: tuple[str, ...] = ()


def choose(board: str | None, outtype: str | None, onnx_dtype: str | None, modality: str) -> Choice:
    """--outtype / --onnx-dtype as given; missing ones from the board's profile (--board), else f16 / fp32. A
    text type the board does not accelerate is a one-line warning (it still runs, on the vector path)."""
    profile_ = profile(board) if board else None
    if profile_ is None:
        return Choice(outtype or "f16", onnx_dtype or "fp32", None)
    encoder_default = profile_.vision_encoder_dtype if modality == "image" else profile_.encoder_dtype
    chosen = Choice(outtype or profile_.default_text_type, onnx_dtype or encoder_default, profile_)
    warnings = []
    if not accelerated(profile_, main_type(chosen.outtype)):
        warnings.append(
            f"--outtype {chosen.outtype}: {profile_.name.upper()} does not accelerate "
            f"{main_type(chosen.outtype)} (it accelerates {', '.join(sorted(profile_.accelerated_types or ()))});"
            " it runs on the slower vector path"
        )
    return Choice(chosen.outtype, chosen.onnx_dtype, profile_, tuple(warnings))


def acceleration_record(board: BoardProfile, tensors: list[dict]) -> dict:
    """How much of the text GGUF's matrix bytes the board's matrix extension runs (manifest `board_profile`). F32
    tensors are left out: llama.cpp keeps them F32 whatever the type (conv kernels, routers, ssm_a), no board
    quantises them."""
    matrices = [t for t in tensors if len(t["shape"]) >= 2 and t["type"] != "F32"]
    total = sum(t["bytes"] for t in matrices) or 1
    slow: dict[str, int] = {}
    for t in matrices:
        if not accelerated(board, t["type"]):
            slow[t["type"]] = slow.get(t["type"], 0) + t["bytes"]
    return {
        "accelerated_bytes_share": round(1 - sum(slow.values()) / total, 4),
        "not_accelerated": {
            k: {"bytes": v, "tensors": sum(1 for t in matrices if t["type"] == k)} for k, v in sorted(slow.items())
        },
    }
