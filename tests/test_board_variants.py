"""Issue 17 end to end through the CLI: --board defaults and warnings, ep_config and -c in the bundle, the memory
statement in the card and `inspect`, K-quant bundles made by llama.cpp's quantiser (loaded back by llama.cpp,
checked against our runtime), the family's precision rules and --tensor-type, and the recipe comparison."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from smt_convert.main import cli
from smt_convert.testing.checkpoints import make_tiny_qwen3_5_text, make_tiny_qwen3_asr

# A Qwen3.5 text model whose rows are multiples of 256, so llama.cpp's K-quants fill their super-blocks (the tiny
# test models' 64-wide rows all fall back to legacy types).
WIDE_QWEN35 = dict(hidden_size=256, intermediate_size=512, num_attention_heads=2, num_key_value_heads=1, head_dim=256,
                   linear_key_head_dim=64, linear_value_head_dim=64, linear_num_key_heads=2, linear_num_value_heads=4,
                   rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                                    "mrope_section": [11, 11, 10], "mrope_interleaved": True})


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def asr(tmp_path_factory):
    root = tmp_path_factory.mktemp("asr")
    make_tiny_qwen3_asr(root / "hf")
    return root / "hf"


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    root = tmp_path_factory.mktemp("wide")
    make_tiny_qwen3_5_text(root / "hf", text_overrides=WIDE_QWEN35, fan_in_scale=True)
    return root / "hf"


def manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def types_of(m: dict) -> dict[str, str]:
    return {t["name"]: t["type"] for t in m["text"]["tensors"]}


def test_board_k1_picks_its_types_threads_and_context(asr, tmp_path):
    out = tmp_path / "k1"
    result = invoke("qwen3-asr", asr, out, "--board", "k1", "--no-verify")
    assert result.exit_code == 0, result.stderr
    m = manifest(out)
    assert (m["text"]["outtype"], m["onnx_dtype"]) == ("q4_0", "int8")   # SpacemiT's own ASR bundle's types
    config = json.loads((out / "config.json").read_text())
    assert config["ep_config"] == {"SPACEMIT_EP_INTRA_THREAD_NUM": "4", "SPACEMIT_EP_INTER_THREAD_NUM": "1",
                                   "SPACEMIT_EP_INTRA_THREAD_AFFINITY": "0;1;2;3"}
    commands = m["board"]["commands"]
    assert all(" -c 4096 -t 4 " in c for c in commands.values())
    assert m["board_profile"]["name"] == "k1"
    # the matrices K1 does not accelerate are named: the output projection kept at Q8_0 (llama.cpp's rule)
    assert set(m["board_profile"]["not_accelerated"]) == {"Q8_0"}
    card = (out / "README.md").read_text()
    assert "## Memory on the board" in card and "| 2 GB | yes |" in card and "Made for K1" in card
    shown = invoke("inspect", out)
    assert "memory        at -c 4096" in shown.output and "board sizes   2 GB: holds it" in shown.output


def test_explicit_types_win_and_an_unaccelerated_one_is_a_warning(asr, tmp_path):
    result = invoke("qwen3-asr", asr, tmp_path / "b", "--board", "k1", "--outtype", "q8_0", "--onnx-dtype", "fp32",
                    "--no-verify")
    assert result.exit_code == 0, result.stderr
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "q8_0" in warnings[0] and "K1 does not accelerate Q8_0" in warnings[0]
    m = manifest(tmp_path / "b")
    assert (m["text"]["outtype"], m["onnx_dtype"]) == ("q8_0", "fp32")


def test_without_a_board_nothing_changes_but_the_context(asr, tmp_path):
    assert invoke("qwen3-asr", asr, tmp_path / "b", "--no-verify", "--context", "1024").exit_code == 0
    m = manifest(tmp_path / "b")
    assert (m["text"]["outtype"], m["onnx_dtype"]) == ("f16", "fp32") and "board_profile" not in m
    assert "ep_config" not in json.loads((tmp_path / "b" / "config.json").read_text())
    assert m["memory"]["n_ctx"] == 1024 and " -c 1024 " in m["board"]["commands"]["llama-server"] + " "


def test_qwen35_keeps_the_gated_deltanet_gates_at_q8_0(wide, tmp_path):
    out = tmp_path / "q4"
    assert invoke("qwen3.5", wide, out, "--outtype", "q4_0", "--no-verify").exit_code == 0
    m = manifest(out)
    types = types_of(m)
    gates = {n: t for n, t in types.items() if ".ssm_alpha." in n or ".ssm_beta." in n}
    assert gates and set(gates.values()) == {"Q8_0"}
    assert types["blk.0.ssm_out.weight"] == "Q4_0"
    assert m["text"]["precision"][0]["by"] == "family rule" and m["text"]["precision"][0]["tensors"] == len(gates)
    # the user's pattern wins over the family's rule, and types gguf-py cannot write are refused in one line
    out2 = tmp_path / "q4b"
    assert invoke("qwen3.5", wide, out2, "--outtype", "q4_0", "--no-verify",
                  "--tensor-type", r"ssm_(alpha|beta)=q4_0").exit_code == 0
    assert {t for n, t in types_of(manifest(out2)).items() if ".ssm_alpha." in n} == {"Q4_0"}
    bad = invoke("qwen3.5", wide, tmp_path / "x", "--outtype", "q4_0", "--tensor-type", "ssm_out=q4_k")
    assert bad.exit_code == 2 and "K-quant --outtype" in bad.stderr and not (tmp_path / "x").exists()
    assert invoke("qwen3.5", wide, out, "--outtype", "f16", "--no-verify", "--force").exit_code == 0
    assert manifest(out)["text"]["precision"] == []   # float outtypes need no rules


@pytest.mark.llama_cpp
def test_q4_k_m_bundle_is_llama_cpps_mixture_and_loads_there(wide, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    out = tmp_path / "k"
    result = invoke("qwen3.5", wide, out, "--outtype", "q4_k_m")
    m = manifest(out)
    assert result.exit_code == 0, (result.stderr, [r for r in m["verification"]["rows"] if not r["ok"]])
    types = types_of(m)
    assert m["text"]["file"].endswith("-text-q4km.gguf") and m["text"]["quantiser"]["preset"] == "q4_k_m"
    assert types["token_embd.weight"] == "Q6_K"                  # tied output: llama.cpp's Q6_K
    assert types["blk.0.ffn_up.weight"] == "Q4_K"
    assert {t for n, t in types.items() if ".ssm_alpha." in n} == {"Q8_0"}   # the family rule reached llama.cpp
    assert not list(out.glob(".*.gguf"))                          # the float intermediate is gone
    assert m["quality"]["kld_mean"] <= 0.3
    # llama.cpp loads it, and its greedy continuation of the golden prompt agrees with our runtime's first token
    model = llama_cpp.Llama(model_path=str(out / m["text"]["file"]), n_ctx=256, verbose=False, logits_all=True)
    from smt_convert.runtime.pipeline import BundleRunner

    runner = BundleRunner(out)
    run = runner.run(None, max_new_tokens=1)
    model.eval(run.prompt.placeholder_ids)
    ours, theirs = run.first_logits, np.asarray(model.scores[len(run.prompt.placeholder_ids) - 1])
    nmse = float(np.sum((ours - theirs) ** 2) / np.sum(theirs ** 2))
    # measured 1e-4-ish: llama.cpp quantises the activations to Q8_K for K-quant matmuls, we dequantise exactly
    assert nmse < 1e-2, nmse


def test_k_quant_without_the_binding_is_one_line(asr, tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_llama(name, *args, **kwargs):
        if name == "llama_cpp":
            raise ImportError("no llama_cpp")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_llama)
    result = invoke("qwen3-asr", asr, tmp_path / "k", "--outtype", "q4_k_m", "--no-verify")
    assert result.exit_code == 2 and "smt-convert[kquants]" in result.stderr
    assert result.stderr.strip().count("\n") == 0 or "error:" in result.stderr.splitlines()[-1]
    assert not (tmp_path / "k").exists() and not list(tmp_path.glob(".k.*"))


def test_recipe_board_and_the_variant_comparison(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "asr"\narchitecture = "qwen3-asr"\nboard = "k1"\n[source]\ntiny = "qwen3-asr"\n'
                      '[[variants]]\n[[variants]]\nouttype = "q8_0"\n[verify]\nmax_new_tokens = 4\n')
    summary = tmp_path / "s.md"
    result = invoke("-q", "recipe", recipe, "--out", tmp_path / "out", "--summary", summary)
    assert result.exit_code == 0, result.output + result.stderr
    assert "variants compared" in result.output
    compared = result.output.split("variants compared")[1].splitlines()
    rows = {ln.split()[1]: ln.split() for ln in compared if ln.startswith("asr ")}
    assert set(rows) == {"q4_0-int8", "q8_0-int8"}                  # the board's default, and the explicit one
    assert float(rows["q4_0-int8"][4]) > float(rows["q8_0-int8"][4])  # 4-bit loses more than 8-bit (KLD mean)
    assert "### Variants compared" in summary.read_text()
    assert (tmp_path / "out" / "asr" / "q4_0-int8" / "manifest.json").is_file()


def test_a_tensor_type_llama_cpp_cannot_make_is_refused_before_writing(wide, tmp_path):
    result = invoke("qwen3.5", wide, tmp_path / "k", "--outtype", "q4_k_m", "--tensor-type", "ssm_out=iq2_xxs",
                    "--no-verify")
    assert result.exit_code == 2 and "iq2_xxs" in result.stderr and "importance" in result.stderr
    assert not (tmp_path / "k").exists() and not list(tmp_path.glob(".k.*"))
