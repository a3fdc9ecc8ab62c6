"""A CHECKPOINT argument -> a local checkpoint directory, plus where it came from.

A local path is used as it is. `ORG/NAME` that names no local path is a Hugging Face Hub repo id: its files
come through huggingface_hub's own cache (`snapshot_download`), which honours HF_HOME, HF_HUB_CACHE,
HF_HUB_OFFLINE and HF_TOKEN itself. Only the files a conversion reads are fetched (ALLOW_PATTERNS); code files
never are, and nothing from a checkpoint is ever imported. The resolved commit goes into the manifest.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from smt_convert.runtime.errors import SmtError, first_line

# What the three families read from a checkpoint (the same set today; a plugin hook only when one differs):
# config and weights, tokenizer files in every layout files.py accepts, chat templates, processor configs
# (preprocessing recorded in the bundle) and README.md (the model card states the license).
ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer*.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "README.md",
]
# Only the top level is read; subfolders can hold other copies of the weights (e.g. `original/`, `onnx/`).
IGNORE_PATTERNS = ["*/*"]

_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class HubSource:
    """A checkpoint taken from the Hub: the repo id, the revision asked for and the commit it resolved to."""

    repo: str
    requested: str  # branch, tag or commit as given ("main" by default)
    commit: str  # the 40-hex commit the files are from

    def record(self) -> dict:
        """The manifest's source fields (`revision` is the resolved commit, not the branch name)."""
        return {"repo": self.repo, "revision": self.commit, "requested_revision": self.requested}


@dataclass(frozen=True)
class ResolvedCheckpoint:
    directory: Path
    hub: HubSource | None = None

    def describe(self) -> str:
        if self.hub is None:
            return str(self.directory)
        return f"{self.hub.repo} at {self.hub.commit[:12]} ({self.directory})"


def is_repo_id(text: str) -> bool:
    """A CHECKPOINT argument names a Hub repo: it looks like one and no local path has that name (a local
    path always wins)."""
    return looks_like_repo_id(text) and not Path(text).exists()


def looks_like_repo_id(text: str) -> bool:
    """`ORG/NAME` as the Hub spells repo ids; `./x/y`, `/x/y`, `~/x` and `x/y/` are paths."""
    if text.startswith((".", "/", "~")) or text.count("/") != 1:
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def resolve_checkpoint(
    text: str | Path, revision: str | None = None, progress: bool = True, what: str = "CHECKPOINT"
) -> ResolvedCheckpoint:
    """A local directory as given, or a repo id fetched (or found in the cache) at `revision` (default main).
    `what` names the argument in errors (e.g. "--reference", or a recipe's "file: source.repo")."""
    text = str(text)
    if not is_repo_id(text):
        if revision is not None:
            raise SmtError(
                f"--revision: {text} is a local path; --revision applies to Hugging Face repo ids (ORG/NAME)"
            )
        return ResolvedCheckpoint(Path(text))
    return download(text, revision, progress, what)


def download(repo: str, revision: str | None, progress: bool = True, what: str = "CHECKPOINT") -> ResolvedCheckpoint:
    """`snapshot_download` of the allowed files; each way it can fail becomes one line saying what to do."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    requested = revision or "main"
    where = f"{what}: {repo}" + (f" (revision {requested})" if revision else "")
    try:
        with _progress_bars(progress):
            path = Path(
                snapshot_download(
                    repo, revision=requested, allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS
                )
            )
    except GatedRepoError:
        raise SmtError(
            f"{where}: gated repository; accept its terms at https://huggingface.co/{repo} and set "
            "HF_TOKEN (or run `hf auth login`)"
        ) from None
    except RepositoryNotFoundError:
        raise SmtError(
            f"{where}: no such directory, and no such repository on the Hugging Face Hub (private "
            "repositories need HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise SmtError(
            f"{where}: revision {requested!r} not found (give a branch, tag or commit of the repository)"
        ) from None
    except LocalEntryNotFoundError as exc:  # offline or unreachable, and not (completely) in the cache
        cache = constants.HF_HUB_CACHE
        if constants.HF_HUB_OFFLINE:
            raise SmtError(
                f"{where}: no such directory, and not (completely) in the Hugging Face cache {cache} with "
                "HF_HUB_OFFLINE set; run once with network access (or point HF_HUB_CACHE at a cache "
                "holding it)"
            ) from None
        raise SmtError(
            f"{where}: the Hugging Face Hub cannot be reached and the cache {cache} does not hold it "
            f"({first_line(exc)})"
        ) from None
    except HfHubHTTPError as exc:
        if exc.response is not None and exc.response.status_code in (401, 403):
            raise SmtError(
                f"{where}: access denied ({exc.response.status_code}); set HF_TOKEN (or run "
                "`hf auth login`) with access to the repository"
            ) from None
        raise SmtError(f"{where}: download failed ({first_line(exc)})") from None
    except OSError as exc:  # disk full, permissions on the cache, ...
        raise SmtError(f"{where}: download failed ({exc.strerror or first_line(exc)})") from None
    commit = path.name
    if not _COMMIT.fullmatch(commit):  # snapshot_download returns <cache>/snapshots/<commit>
        raise SmtError(f"{where}: unexpected cache path {path} (no commit in it)")
    return ResolvedCheckpoint(path, HubSource(repo=repo, requested=requested, commit=commit))


@contextmanager
def _progress_bars(show: bool):
    """huggingface_hub's download bars (on stderr), switched off for --quiet and restored afterwards."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    turn_off = not show and not are_progress_bars_disabled()
    if turn_off:
        disable_progress_bars()
    try:
        yield
    finally:
        if turn_off:
            enable_progress_bars()
