"""Hugging Face repo ids as CHECKPOINT (converters/hub.py), offline, from a Hub cache this test populates.

The cache is laid out as huggingface_hub documents it (models--ORG--NAME/{blobs/<sha256>, snapshots/<commit>/<file>
-> ../../blobs/<sha256>, refs/<branch> holding the commit}); every CLI run is a subprocess with HF_HUB_CACHE
pointing at it and HF_HUB_OFFLINE=1, so huggingface_hub reads those variables as it does for a user and nothing
touches the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from smt_convert.converters.hub import ALLOW_PATTERNS, IGNORE_PATTERNS, is_repo_id, looks_like_repo_id
from smt_convert.converters.recipe import load_recipe
from smt_convert.runtime.bundle import sha256_file
from smt_convert.runtime.errors import SmtError
from smt_convert.testing.checkpoints import make_tiny_qwen3_asr

REPO = "tiny-org/Tiny-ASR"
SHARDED_REPO = "tiny-org/Tiny-ASR-sharded"
COMMIT_MAIN = hashlib.sha1(b"main").hexdigest()
COMMIT_OLD = hashlib.sha1(b"old").hexdigest()
# In the snapshot, as a repo with custom code would hold it: run, it would leave a marker file.
EVIL_CODE = "import pathlib\npathlib.Path(__file__).with_name('IMPORTED').write_text('x')\n"


def add_snapshot(cache: Path, repo: str, commit: str, files: dict[str, bytes], refs: tuple[str, ...] = ()) -> Path:
    """One commit of `repo` in huggingface_hub's cache layout: content-addressed blobs, a snapshot of relative
    symlinks to them, and refs naming the commit."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    for ref in refs:
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / ref).write_text(commit)
    return snapshot


def checkpoint_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A cache holding REPO at two commits (main: seed 0, with custom code and auto_map; an older one: seed 1),
    and the local checkpoints they were made from."""
    root = tmp_path_factory.mktemp("hub")
    make_tiny_qwen3_asr(root / "ckpt-main", seed=0)
    make_tiny_qwen3_asr(root / "ckpt-old", seed=1)
    main_files = checkpoint_files(root / "ckpt-main")
    config = json.loads(main_files["config.json"])
    config["auto_map"] = {"AutoModel": "modeling_tiny.TinyModel", "AutoConfig": "modeling_tiny.TinyConfig"}
    main_files["config.json"] = json.dumps(config).encode()
    main_files["modeling_tiny.py"] = EVIL_CODE.encode()
    cache = root / "cache"
    main_snapshot = add_snapshot(cache, REPO, COMMIT_MAIN, main_files, refs=("main",))
    add_snapshot(cache, REPO, COMMIT_OLD, checkpoint_files(root / "ckpt-old"))
    make_tiny_qwen3_asr(root / "ckpt-sharded", seed=2, shards=3)
    add_snapshot(cache, SHARDED_REPO, COMMIT_MAIN, checkpoint_files(root / "ckpt-sharded"), refs=("main",))
    return {"root": root, "cache": cache, "main_snapshot": main_snapshot}


def smt(hub, *args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(hub["root"] / "hf-home"), HF_HUB_CACHE=str(hub["cache"]), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "smt_convert", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd or hub["root"], timeout=600)


def converted(hub, tmp_path, *args) -> dict:
    out = tmp_path / "bundle"
    proc = smt(hub, "qwen3-asr", *args, out, "--no-verify", "--outtype", "f32")
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "manifest.json").read_text())


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("revision", [None, "main", COMMIT_MAIN])
def test_repo_id_converts_offline_with_its_commit_in_the_manifest(hub, tmp_path, revision):
    manifest = converted(hub, tmp_path, REPO, *(["--revision", revision] if revision else []))
    source = manifest["source"]
    assert source["repo"] == REPO
    assert source["revision"] == COMMIT_MAIN
    assert source["requested_revision"] == (revision or "main")
    assert Path(source["directory"]) == hub["main_snapshot"].resolve()
    weights = hub["root"] / "ckpt-main" / "model.safetensors"
    assert source["weight_files"] == [{"file": "model.safetensors", "size": weights.stat().st_size,
                                       "sha256": sha256_file(weights)}]


@pytest.mark.slow
def test_a_commit_selects_that_commits_files(hub, tmp_path):
    source = converted(hub, tmp_path, REPO, "--revision", COMMIT_OLD)["source"]
    assert source["revision"] == COMMIT_OLD
    old_weights = hub["root"] / "ckpt-old" / "model.safetensors"
    assert source["weight_files"][0]["sha256"] == sha256_file(old_weights)
    assert sha256_file(old_weights) != sha256_file(hub["root"] / "ckpt-main" / "model.safetensors")


@pytest.mark.slow
def test_code_in_the_snapshot_is_never_run_nor_copied(hub, tmp_path):
    converted(hub, tmp_path, REPO)
    bundle = tmp_path / "bundle"
    assert not list(bundle.rglob("*.py"))
    assert not (hub["main_snapshot"] / "IMPORTED").exists()
    assert not list(hub["cache"].rglob("IMPORTED"))


@pytest.mark.slow
def test_a_local_directory_named_like_the_repo_id_wins(hub, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(hub["root"] / "ckpt-old", work / REPO)
    out = tmp_path / "bundle"
    proc = smt(hub, "qwen3-asr", REPO, out, "--no-verify", cwd=work)
    assert proc.returncode == 0, proc.stderr
    source = json.loads((out / "manifest.json").read_text())["source"]
    assert "repo" not in source and "revision" not in source
    assert Path(source["directory"]) == (work / REPO).resolve()


@pytest.mark.slow
def test_inspect_and_quiet(hub, tmp_path):
    proc = smt(hub, "inspect", REPO, "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert (plan["repo"], plan["revision"]) == (REPO, COMMIT_MAIN)
    proc = smt(hub, "-q", "inspect", REPO)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert f"Hugging Face {REPO} at commit {COMMIT_MAIN}" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("args, mentions", [
    (["qwen3-asr", "tiny-org/Missing", "OUT", "--no-verify"], ["tiny-org/Missing", "HF_HUB_OFFLINE", "cache"]),
    (["convert", REPO, "OUT", "--revision", "no-such-branch"], [REPO, "no-such-branch", "HF_HUB_OFFLINE"]),
    (["inspect", "tiny-org/Missing"], ["tiny-org/Missing", "HF_HUB_OFFLINE"]),
    (["convert", "ckpt-main", "OUT", "--revision", "main"], ["--revision", "ckpt-main", "local path"]),
])
def test_what_cannot_be_had_offline_is_one_line(hub, tmp_path, args, mentions):
    out = tmp_path / "out"
    line = one_line_error(smt(hub, *[str(out) if a == "OUT" else a for a in args]))
    for text in mentions:
        assert text in line, (text, line)
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


@pytest.mark.slow
def test_recipe_with_a_repo_source(hub, tmp_path):
    recipe = tmp_path / "hub.toml"
    recipe.write_text(f'architecture = "qwen3-asr"\n[source]\nrepo = "{REPO}"\nrevision = "{COMMIT_OLD}"\n'
                      '[[variants]]\nouttype = "f32"\nonnx_dtype = "fp32"\n[verify]\nenabled = false\n')
    proc = smt(hub, "recipe", recipe, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    (manifest,) = (tmp_path / "out").glob("hub/*/manifest.json")
    source = json.loads(manifest.read_text())["source"]
    assert (source["repo"], source["revision"], source["requested_revision"]) == (REPO, COMMIT_OLD, COMMIT_OLD)


@pytest.mark.parametrize("source, mentions", [
    ({"repo": REPO, "path": "x"}, ["source:", "repo (+ revision)"]),
    ({"revision": "main", "path": "x"}, ["source:"]),
    ({"repo": "not a repo/id!"}, ["source.repo", "ORG/NAME"]),
    ({"repo": "./local/dir"}, ["source.repo"]),
    ({"repo": REPO, "revision": 3}, ["source.revision", "expected str"]),
])
def test_recipe_repo_source_mistakes(tmp_path, source, mentions):
    lines = [f"{k} = {json.dumps(v)}" for k, v in source.items()]
    path = tmp_path / "r.toml"
    path.write_text('architecture = "qwen3-asr"\n[source]\n' + "\n".join(lines) + '\n[[variants]]\nouttype = "f32"\n')
    with pytest.raises(SmtError) as err:
        load_recipe(path)
    for text in mentions:
        assert text in str(err.value), (text, str(err.value))


def test_what_counts_as_a_repo_id(tmp_path, monkeypatch):
    assert looks_like_repo_id("Qwen/Qwen3-ASR-0.6B") and looks_like_repo_id("org/name.v2_x")
    for path in ("./Qwen/x", "/abs/x", "~/x", "a/b/c", "a/b/", "name", "a--b/c", "a/b c"):
        assert not looks_like_repo_id(path), path
    monkeypatch.chdir(tmp_path)
    assert is_repo_id("org/model")
    (tmp_path / "org" / "model").mkdir(parents=True)
    assert not is_repo_id("org/model")  # a local path always wins


def test_allowed_files_are_what_conversion_reads_and_never_code():
    """The pattern list against a realistic repository listing, with huggingface_hub's own filter."""
    from huggingface_hub.utils import filter_repo_objects

    listing = ["config.json", "generation_config.json", "model.safetensors", "model-00001-of-00002.safetensors",
               "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
               "vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
               "chat_template.json", "preprocessor_config.json", "processor_config.json",
               "video_preprocessor_config.json", "README.md",
               "modeling_qwen3_asr.py", "configuration_qwen3_asr.py", "processing_qwen3_asr.py",
               "image_processing_paddleocr.py", "pytorch_model.bin", "model.pt", ".gitattributes", "LICENSE",
               "assets/demo.png", "onnx/model.onnx", "sub/model.safetensors"]
    allowed = set(filter_repo_objects(listing, allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS))
    assert allowed == set(listing[:18])


@pytest.mark.slow
def test_a_sharded_repo_converts(hub, tmp_path):
    """Shards in a cache snapshot are symlinks into ../../blobs: still files of the checkpoint."""
    manifest = converted(hub, tmp_path, SHARDED_REPO)
    assert manifest["source"]["repo"] == SHARDED_REPO
    assert len(manifest["source"]["weight_files"]) > 1


@pytest.mark.slow
def test_gguf_general_metadata_names_the_repo_not_the_commit(hub, tmp_path):
    """gguf-py's name heuristics read the directory name; a snapshot directory is the commit hash."""
    import gguf

    manifest = converted(hub, tmp_path, REPO)
    reader = gguf.GGUFReader(tmp_path / "bundle" / manifest["text"]["file"])
    general = {k: f.contents() for k, f in reader.fields.items() if k.startswith("general.")}
    assert not [k for k, v in general.items() if isinstance(v, str) and COMMIT_MAIN[:12] in v], general
    assert general.get("general.organization") == "Tiny Org", general  # from the repo id, as llama.cpp would


def test_a_bad_output_is_refused_before_the_hub_is_asked(hub, tmp_path):
    """OUTPUT holding someone's files: refused first, not after gigabytes are fetched (the repo here does not
    even exist: the error is about OUTPUT)."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    line = one_line_error(smt(hub, "qwen3-asr", "tiny-org/Not-There", out))
    assert str(out) in line and "not an smt-convert bundle" in line
    assert (out / "notes.txt").read_text() == "keep me"
