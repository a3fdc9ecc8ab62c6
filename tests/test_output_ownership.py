"""Output ownership (issue 21): what sits at OUTPUT is ours to replace only when it is a bundle we wrote, with
nothing else in it, unchanged from the start of the run to the final move; one run per output at a time."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from smt_convert.converters.output import (PARTIAL_MARKER, claim_output, finish_output, held_signals, release,
                                           sweep_partials)
from smt_convert.runtime.errors import SmtError


def fake_bundle(root: Path, files: dict[str, bytes] | None = None, **manifest_changes) -> Path:
    """A directory with a complete, well-formed manifest listing exactly `files` (what `verify` accepts as a
    manifest's structure; the contents do not matter to ownership)."""
    files = files or {"m-text-f16.gguf": b"gguf" * 10, "config.json": b"{}", "golden/expected.json": b"{}"}
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    manifest = {"format": 1, "complete": True, "tool": {"name": "smt-convert", "version": "0"},
                "architecture": "qwen3.5", "modality": "text", "text": {"file": "m-text-f16.gguf", "outtype": "f16"},
                "encoders": [], "onnx_dtype": "fp32", "prompt": {"template": "{prompt}", "template_fields": {"prompt": ""},
                                                                "positions": "1d", "stop_tokens": []},
                "preprocessing": {},
                "golden": {"directory": "golden", "files": ["expected.json"]},
                "files": [{"path": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()]}
    manifest.update(manifest_changes)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def write_new_bundle(claim) -> None:
    fake_bundle(claim.tmp, {"new.gguf": b"new"})


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def convert_once(out: Path, force: bool = False) -> list[str]:
    claim = claim_output(out, force)
    try:
        write_new_bundle(claim)
        return finish_output(claim)
    finally:
        release(claim)


# ---- --force replaces only what the old manifest lists ------------------------------------------------------

def test_force_replaces_a_clean_bundle_and_leaves_nothing_beside_it(tmp_path):
    out = fake_bundle(tmp_path / "out")
    assert convert_once(out, force=True) == []
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "new.gguf"]
    assert leftovers(tmp_path, "out") == []


@pytest.mark.parametrize("foreign,named", [("my_recording.wav", "my_recording.wav"), ("notes/todo.txt", "notes/"),
                                           ("golden/mine.png", "golden/mine.png")])
def test_force_refuses_a_bundle_holding_a_file_its_manifest_does_not_list(tmp_path, foreign, named):
    out = fake_bundle(tmp_path / "out")
    (out / foreign).parent.mkdir(parents=True, exist_ok=True)
    (out / foreign).write_text("the user's")
    with pytest.raises(SmtError, match=f"holds {named}, which its manifest does not list"):
        claim_output(out, force=True)
    assert (out / foreign).read_text() == "the user's" and (out / "m-text-f16.gguf").is_file()
    assert leftovers(tmp_path, "out") == []


def test_a_stray_manifest_does_not_make_a_project_ours(tmp_path):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.c").write_text("int main;")
    (project / "manifest.json").write_text(json.dumps({"tool": {"name": "smt-convert"}}))
    with pytest.raises(SmtError, match="not an smt-convert bundle we can replace"):
        claim_output(project, force=True)
    assert (project / "src" / "main.c").is_file()


@pytest.mark.parametrize("change,message", [
    (lambda out: (out / "config.json").write_text('{"edited": true}'), "config.json changed since"),
    (lambda out: (out / "golden" / "expected.json").unlink(), None),   # a listed file gone: still ours
    (lambda out: os.symlink("/etc/passwd", out / "link"), "holds link"),
])
def test_force_and_changed_bundles(tmp_path, change, message):
    out = fake_bundle(tmp_path / "out")
    change(out)
    if message is None:
        assert convert_once(out, force=True) == []
        return
    with pytest.raises(SmtError, match=message):
        claim_output(out, force=True)


def test_incomplete_or_malformed_manifest_is_not_ours(tmp_path):
    out = fake_bundle(tmp_path / "a", complete=False)
    with pytest.raises(SmtError, match="complete"):
        claim_output(out, force=True)
    out = fake_bundle(tmp_path / "b", files=None, text="not a table")
    with pytest.raises(SmtError, match="text"):
        claim_output(out, force=True)


# ---- what appears during the run is never replaced ----------------------------------------------------------

def test_a_directory_that_appears_during_the_run_is_kept_and_the_bundle_left_beside_it(tmp_path):
    out = tmp_path / "out"
    claim = claim_output(out, force=True)
    try:
        write_new_bundle(claim)
        out.mkdir()
        (out / "theirs.txt").write_text("created meanwhile")
        with pytest.raises(SmtError, match=r"appeared during the run.*bundle is at .*out\.new"):
            finish_output(claim)
    finally:
        release(claim)
    assert (out / "theirs.txt").read_text() == "created meanwhile"
    assert (tmp_path / "out.new" / "new.gguf").read_bytes() == b"new"
    assert not (tmp_path / "out.new" / PARTIAL_MARKER).exists()
    assert leftovers(tmp_path, "out") == []


def test_an_empty_directory_filled_during_the_run_is_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    claim = claim_output(out, force=False)
    try:
        write_new_bundle(claim)
        (out / "theirs.txt").write_text("x")
        with pytest.raises(SmtError, match="was filled during the run"):
            finish_output(claim)
    finally:
        release(claim)
    assert (out / "theirs.txt").is_file() and (tmp_path / "out.new" / "new.gguf").is_file()


def test_a_file_added_to_the_old_bundle_during_the_run_is_kept(tmp_path):
    out = fake_bundle(tmp_path / "out")
    claim = claim_output(out, force=True)
    try:
        write_new_bundle(claim)
        (out / "recorded-meanwhile.wav").write_bytes(b"RIFF")
        with pytest.raises(SmtError, match="changed .*recorded-meanwhile.wav"):
            finish_output(claim)
    finally:
        release(claim)
    assert (out / "recorded-meanwhile.wav").read_bytes() == b"RIFF" and (out / "m-text-f16.gguf").is_file()
    assert (tmp_path / "out.new" / "new.gguf").is_file()


def test_an_empty_directory_becomes_the_bundle(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    convert_once(out)
    assert (out / "new.gguf").is_file()


# ---- one run per output -----------------------------------------------------------------------------------

def test_a_second_run_on_the_same_output_is_refused_while_the_first_holds_it(tmp_path):
    out = tmp_path / "out"
    first = claim_output(out, force=False)
    code = ("import sys; from smt_convert.converters.output import claim_output\n"
            "from smt_convert.runtime.errors import SmtError\n"
            f"try:\n    claim_output({str(out)!r}, False)\nexcept SmtError as e:\n    print(e); sys.exit(2)\n")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert other.returncode == 2 and f"another smt-convert run (pid {os.getpid()})" in other.stdout
    write_new_bundle(first)
    finish_output(first)
    release(first)
    assert not (tmp_path / ".out.lock").exists()
    with pytest.raises(SmtError, match="already holds a bundle"):   # the second run, after the first finished
        claim_output(out, force=False)


# ---- odd outputs ----------------------------------------------------------------------------------------------

def test_a_symlinked_output_is_followed_and_nothing_is_left_beside_it(tmp_path):
    real = fake_bundle(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(real)
    convert_once(link, force=True)
    assert link.is_symlink() and (real / "new.gguf").is_file()
    assert leftovers(tmp_path, "real") == [] and leftovers(tmp_path, "link") == []


@pytest.mark.parametrize("name", ["a**b", "[x]", "out?"])
def test_glob_characters_in_the_output_name(tmp_path, name):
    convert_once(tmp_path / name)
    convert_once(tmp_path / name, force=True)
    assert (tmp_path / name / "new.gguf").is_file() and leftovers(tmp_path, name) == []


@pytest.mark.parametrize("given", [".", ".."])
def test_the_current_directory_is_refused(tmp_path, monkeypatch, given):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    with pytest.raises(SmtError, match="current directory"):
        claim_output(Path(given), force=True)


def test_sweep_is_not_confused_by_glob_characters(tmp_path):
    partial = tmp_path / ".a[1].partial-x"
    partial.mkdir()
    (partial / PARTIAL_MARKER).write_text("999999999\n")
    sweep_partials(tmp_path, "a[1]")
    assert not partial.exists()


def test_signals_are_held_during_clean_up_and_delivered_after():
    got = []
    previous = signal.signal(signal.SIGHUP, lambda *a: got.append("hup"))
    try:
        with held_signals():
            os.kill(os.getpid(), signal.SIGHUP)
            assert got == []
        assert got == ["hup"]
    finally:
        signal.signal(signal.SIGHUP, previous)


@pytest.mark.parametrize("escape", ["../victim.txt", "/tmp/victim-abs.txt", ""])
def test_a_manifest_listing_paths_outside_the_bundle_is_not_ours(tmp_path, escape):
    victim = tmp_path / "victim.txt"
    victim.write_text("not the bundle's")
    out = fake_bundle(tmp_path / "out")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"].append({"path": escape, "size": 15, "sha256": "0" * 64})
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SmtError, match="a path outside the bundle"):
        claim_output(out, force=True)
    assert victim.read_text() == "not the bundle's"


def test_leftovers_kept_after_the_move_are_not_removed_by_the_release(tmp_path):
    out = fake_bundle(tmp_path / "out")
    (tmp_path / "out.kept").mkdir()                      # the first name for kept files is taken
    claim = claim_output(out, force=True)
    try:
        write_new_bundle(claim)
        listed = claim.existing.listed
        (out / "late.wav").write_bytes(b"RIFF")          # appears after the re-check, before the swap
        import smt_convert.converters.output as output

        real = output._changed_since_claim
        output._changed_since_claim = lambda c: None      # the race: the re-check saw nothing
        try:
            notes = finish_output(claim)
        finally:
            output._changed_since_claim = real
        assert listed and len(notes) == 1
    finally:
        release(claim)
    kept = tmp_path / "out.kept-2"
    assert (kept / "late.wav").read_bytes() == b"RIFF" and (out / "new.gguf").is_file()
