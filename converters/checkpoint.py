"""A Hugging Face checkpoint directory: its config and a lazy, shard-aware index of its tensors.

Nothing here knows about any architecture. Opening a checkpoint reads only the safetensors headers, so
missing shards, truncated files and duplicate tensors are found before any heavy work starts; tensor
data is read one tensor at a time when a converter asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from smt_convert.runtime.bundle import read_json, sha256_file
from smt_convert.runtime.errors import SmtError, first_line

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# Bytes per element of the safetensors dtypes a checkpoint may use.
DTYPE_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_SIZES.get(self.dtype, 4)


def _read_header(path: Path) -> dict:
    """Parse one safetensors header with the safetensors library and check the file holds all its data."""
    from safetensors import safe_open  # conversion-only dependency

    try:
        with safe_open(str(path), framework="pt") as f:
            entries = {}
            for name in f.keys():
                sl = f.get_slice(name)
                entries[name] = (sl.get_dtype(), tuple(int(d) for d in sl.get_shape()))
    except Exception as exc:  # safetensors raises its own error types for truncated or corrupt files
        raise SmtError(f"{path}: not a readable safetensors file ({first_line(exc)})") from None
    return entries


class Checkpoint:
    """Config plus a name -> TensorInfo index over every weight file; tensors are loaded on demand."""

    def __init__(self, root: Path, config: dict, tensors: dict[str, TensorInfo], weight_files: list[Path]):
        self.root = root
        self.config = config
        self.tensors = tensors
        self.weight_files = weight_files

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @classmethod
    def open(cls, root: str | Path) -> "Checkpoint":
        root = Path(root)
        if not root.is_dir():
            raise SmtError(f"{root}: checkpoint directory not found")
        from smt_convert.converters.document_shapes import check_checkpoint_documents

        check_checkpoint_documents(root)
        config = read_json(root / "config.json", "config.json")
        files = cls._weight_files(root)
        tensors: dict[str, TensorInfo] = {}
        for path in files:
            for name, (dtype, shape) in _read_header(path).items():
                if name in tensors:
                    raise SmtError(f"{path}: tensor {name} also appears in {tensors[name].file.name}")
                tensors[name] = TensorInfo(name, path, dtype, shape)
        index_path = root / INDEX_FILE
        if index_path.is_file():
            weight_map = read_json(index_path, INDEX_FILE).get("weight_map", {})
            for name, shard in weight_map.items():
                info = tensors.get(name)
                if info is None:
                    raise SmtError(f"{index_path}: weight_map.{name}: tensor not found in {shard}")
                if info.file.name != shard:
                    raise SmtError(f"{index_path}: weight_map.{name}: listed in {shard} but stored in {info.file.name}")
        return cls(root, config, tensors, files)

    @staticmethod
    def _weight_files(root: Path) -> list[Path]:
        index_path = root / INDEX_FILE
        if index_path.is_file():
            index = read_json(index_path, INDEX_FILE)
            weight_map = index.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise SmtError(f"{index_path}: weight_map: missing or empty")
            shards = sorted(set(weight_map.values()))
            for shard in shards:  # confined before anything is opened: an index names files, not places
                # (by name, not by where it resolves: a Hugging Face cache snapshot is symlinks into ../../blobs)
                if not isinstance(shard, str) or Path(shard).is_absolute() or ".." in Path(shard).parts:
                    raise SmtError(f"{index_path}: weight_map: shard {shard!r} is not a file inside {root}")
            missing = [s for s in shards if not (root / s).is_file()]
            if missing:
                raise SmtError(f"{index_path}: weight_map: {len(missing)} shard(s) missing: {', '.join(missing)}")
            return [root / s for s in shards]
        if (root / SINGLE_FILE).is_file():
            return [root / SINGLE_FILE]
        # regular files only: a FIFO or device named *.safetensors would block or never end when read
        found = sorted(p for p in root.glob("*.safetensors") if p.is_file())
        if found:
            return found
        raise SmtError(f"{root}: no weights found (looked for {INDEX_FILE}, {SINGLE_FILE}, *.safetensors)")

    def load(self, name: str):
        """Read one tensor as a torch tensor in its stored dtype.

        The file is mapped only for this read: a handle kept open would leave every page it touched resident,
        so peak RSS would grow with the model instead of staying near the largest tensor."""
        from safetensors import safe_open

        info = self.tensors.get(name)
        if info is None:
            raise SmtError(f"{self.root}: tensor {name} not found in the checkpoint")
        try:
            with safe_open(str(info.file), framework="pt") as f:
                return f.get_tensor(name)
        except Exception as exc:
            raise SmtError(f"{info.file}: tensor {name}: cannot be read ({exc})") from None

    def row_blocks(self, name: str, rows: int):
        """Yield a 2-D tensor `rows` rows at a time (torch, stored dtype), reading only those rows."""
        from safetensors import safe_open

        info = self.tensors[name]
        try:
            with safe_open(str(info.file), framework="pt") as f:
                sl = f.get_slice(name)
                for start in range(0, info.shape[0], rows):
                    yield sl[start : start + rows]
        except Exception as exc:
            raise SmtError(f"{info.file}: tensor {name}: cannot be read ({exc})") from None

    def tensors_equal(self, a: str, b: str, block_bytes: int = 64 << 20) -> bool:
        """Whether two tensors hold the same values, compared a block of rows at a time (an embedding and an
        lm_head can each be a gigabyte; neither is loaded whole)."""
        from safetensors import safe_open

        ia, ib = self.tensors[a], self.tensors[b]
        if ia.shape != ib.shape:
            return False
        rows = ia.shape[0] if ia.shape else 1
        step = max(1, block_bytes // max(1, ia.nbytes // max(1, rows)))
        try:
            with safe_open(str(ia.file), framework="pt") as fa, safe_open(str(ib.file), framework="pt") as fb:
                sa, sb = fa.get_slice(a), fb.get_slice(b)
                for start in range(0, rows, step):
                    block_a, block_b = sa[start : start + step], sb[start : start + step]
                    if not block_a.float().equal(block_b.float()):
                        return False
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise SmtError(f"{ia.file}: tensors {a} / {b}: cannot be read ({exc})") from None
        return True

    def close(self) -> None:
        """Nothing stays open between reads; kept so callers can release a checkpoint explicitly."""

    def dtypes(self) -> set[str]:
        return {t.dtype for t in self.tensors.values()}

    def source_record(self, hash_weights: bool = True, sha256=sha256_file) -> dict:
        """What the manifest says about the input: config hash and per-file weight hashes (`sha256`: path ->
        hex digest, e.g. a BackgroundHashes' that started on the weight files when the conversion did)."""
        record = {
            "directory": str(self.root.resolve()),
            "config_sha256": sha256(self.config_path),
            "weight_files": [],
        }
        for path in self.weight_files:
            entry = {"file": path.name, "size": path.stat().st_size}
            if hash_weights:
                entry["sha256"] = sha256(path)
            record["weight_files"].append(entry)
        return record
