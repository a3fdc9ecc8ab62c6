"""`smt-convert inspect`: the plan as data and as a human-readable report (nothing is written)."""

from __future__ import annotations

from smt_convert.converters.card import human_size
from smt_convert.converters.plugin import Plan


def describe_plan(plan: Plan, ckpt) -> dict:
    plugin = plan.plugin
    type_counts: dict[str, int] = {}
    for t in plan.estimated_types.values():
        type_counts[t] = type_counts.get(t, 0) + 1
    bytes_per = {"fp32": 4, "fp16": 2, "int8": 1}[plan.onnx_dtype]  # int8: a lower bound (convs stay float)
    outputs = [
        {
            "file": plan.text_file,
            "kind": f"GGUF {plan.text_arch}",
            "dtype": plan.outtype,
            "tensor_types": type_counts,
            "bytes": plan.text_bytes,
        }
    ]
    for enc in plan.encoders:
        outputs.append(
            {
                "file": enc.file,
                "kind": f"ONNX {enc.role}",
                "dtype": plan.onnx_dtype,
                "bytes": enc.params * bytes_per,
                "inputs": enc.inputs,
                "outputs": enc.outputs,
            }
        )
    from smt_convert.converters.text_gguf import KQUANT_PRESETS, OUTTYPES, estimated_kquant_types, tensor_nbytes

    text_sizes = {}
    for outtype in [*OUTTYPES, *KQUANT_PRESETS]:  # K-quants: estimated (llama.cpp decides per tensor)
        types = (
            plugin.text_types(plan.text_tensors, outtype)
            if outtype in OUTTYPES
            else estimated_kquant_types(plan.text_tensors, outtype)
        )
        text_sizes[outtype] = sum(tensor_nbytes(t.shape, types[t.name]) for t in plan.text_tensors)
    encoder_params = sum(e.params for e in plan.encoders)
    # int8 quantises only MatMul/Gemm weights; treating every weight as int8 gives a lower bound
    encoder_sizes = {"fp32": encoder_params * 4, "fp16": encoder_params * 2, "int8": encoder_params}
    return {
        "checkpoint": str(ckpt.root),
        "sizes_by_choice": {"text": text_sizes, "encoders": encoder_sizes},
        "architecture": plugin.name,
        "layout": plan.facts.layout,
        "weight_dtypes": sorted(ckpt.dtypes()),
        "weight_files": [p.name for p in ckpt.weight_files],
        "parameters": plan.params,
        "tokenizer": {
            "kind": plan.tokenizer.kind,
            "directory": str(plan.tokenizer.directory),
            "files": [p.name for p in plan.tokenizer.files],
            "chat_template": str(plan.tokenizer.chat_template_file) if plan.tokenizer.chat_template_file else None,
        },
        "outputs": outputs,
        "dropped_tensors": plan.dropped,
        "notes": plan.notes,
    }


def format_plan(d: dict) -> str:
    hub = f" (Hugging Face {d['repo']} at commit {d['revision']})" if "repo" in d else ""
    lines = [
        f"checkpoint   {d['checkpoint']}{hub}",
        f"architecture {d['architecture']} ({d['layout']} layout, weights {'/'.join(d['weight_dtypes'])} "
        f"in {len(d['weight_files'])} file(s))",
        "parameters   " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in d["parameters"].items()),
        f"tokenizer    {d['tokenizer']['kind']} from {d['tokenizer']['directory']}"
        + (f" (chat template: {d['tokenizer']['chat_template']})" if d["tokenizer"]["chat_template"] else ""),
        "outputs:",
    ]
    for o in d["outputs"]:
        extra = ""
        if "tensor_types" in o:
            extra = "  [" + ", ".join(f"{n} x {t}" for t, n in sorted(o["tensor_types"].items())) + "]"
        if "inputs" in o:
            io = lambda items: ", ".join(f"{x['name']} {x['shape']} {x['dtype']}" for x in items)
            extra = f"  {io(o['inputs'])} -> {io(o['outputs'])}"
        lines.append(f"  {o['file']:<48} {o['kind']:<22} {o['dtype']:<5} {human_size(o['bytes']):>9}{extra}")
    if any("inputs" in o for o in d["outputs"]):
        lines.append("  (each .onnx with its weights beside it in <file>.onnx.data)")
    lines.append("  config.json, manifest.json, tokenizer files, golden/ (small)")
    sizes = d["sizes_by_choice"]
    lines.append("size by choice:")
    lines.append("  --outtype     " + "  ".join(f"{k} {human_size(v)}" for k, v in sizes["text"].items()))
    lines.append(
        "  --onnx-dtype  "
        + "  ".join(f"{k} {'>=' if k == 'int8' else ''}{human_size(v)}" for k, v in sizes["encoders"].items())
    )
    if d["dropped_tensors"]:
        lines.append(f"not converted ({len(d['dropped_tensors'])} tensors):")
        for name, why in list(d["dropped_tensors"].items())[:10]:
            lines.append(f"  {name}: {why}")
    return "\n".join(lines)
