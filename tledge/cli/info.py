"""tledge info MODEL|EXPORT_DIR [--json]: contract, tensors, quantisation, labels, size, backend; for an
export folder, its manifest: every file with its precision, size, parity verdict and whether it still
matches (exit 2 when a file is missing or changed). No TensorFlow."""
from __future__ import annotations


from tledge.contract import INDEPENDENT
from tledge.runtime.foreign import STANDARD_ORIGIN
from tledge.cli.model_options import add_model_options, load_kwargs


def add_arguments(p) -> None:
    p.add_argument("model", help="a .tflite or .onnx file, or an export folder (its manifest)")
    p.add_argument("--json", action="store_true", help="print everything as one JSON object")
    add_model_options(p)


def run(args) -> int:
    from pathlib import Path

    from tledge.cli.validate import edge_model
    from tledge.errors import MissingDependency
    from tledge.runtime import load
    from tledge.cli.model_options import check_model_options

    if Path(args.model).is_dir():
        given = [k for k, v in load_kwargs(args).items() if v is not False and v != ()]
        if given:  # `info EXPORT --device rpi44` said nothing: the options are for loading one file
            from tledge.errors import TledgeError

            flag = "--" + ("delegate" if given[0] == "delegates" else given[0].replace("_", "-"))
            raise TledgeError(f"{flag} is for loading one model file, and {args.model} is an export folder (info "
                              f"lists its manifest): tledge info {Path(args.model) / '<file>'} {flag} ...")
        return _folder(Path(args.model), args.json)
    edge_model(args.model)
    check_model_options(args, [args.model])
    try:
        model = load(args.model, **load_kwargs(args))  # refuses a file changed since its export
    except MissingDependency as exc:  # the core install: a .tflite's contract and tensors are read without one
        if Path(args.model).suffix.lower() != ".tflite":
            raise
        info = offline_info(Path(args.model), str(exc))
    else:
        info = model.info()
    if args.json:
        from tledge.runtime.outputs import json_text
        from tledge.safejson import finite

        print(json_text(finite(info), indent=2))
        return 0
    from tledge.runtime.outputs import printable

    print("\n".join(printable(line) for line in describe(info)))  # labels, names: from the file, no escapes
    return 0


def offline_info(path, why: str) -> dict:
    """What a .tflite file says about itself, read as bytes (no interpreter): its contract (embedded, else the
    tledge.json beside it), tensor names and shapes. The dtype, quantisation and a test run need an interpreter."""
    from tledge import flatbuf
    from tledge.metadata import read_tflite_contract, sidecar_contract

    data = path.read_bytes()
    contract, origin = read_tflite_contract(data), "embedded"
    if contract is None and (contract := sidecar_contract(path)) is not None:
        origin = "tledge.json"
    notes = [f"read from the file's bytes, not loaded: {why}"]
    if contract is None:  # a file made elsewhere: what its standard metadata says (the runtime infers from it)
        notes += _standard_notes(path)
    io = flatbuf.tflite_io_tensors(data)
    tensors = {k: [{"name": t["name"], "shape": t["shape"], "dtype": None, "quant": None} for t in v]
               for k, v in io.items()}
    return {"path": str(path), "format": "tflite", "size_bytes": len(data), "backend": None, "provider": None,
            "threads": None, "load_ms": None, "contract_origin": origin if contract else None,
            "contract": contract.to_dict() if contract else None, "labels": len(contract.labels) if contract else 0,
            **tensors, "notes": notes}


def _standard_notes(path) -> list[str]:
    from tledge.runtime.foreign import read_standard

    std = read_standard(path)
    if std is None:
        return []
    labels, inp = std.labels(), std.inputs[0] if std.inputs else None
    sep = "; " if any("," in lab for lab in labels[:3]) else ", "
    shown = f"{len(labels)} labels" + (f" ({sep.join(labels[:3])}{sep}...)" if labels else "")
    norm = f", mean {_nums(inp.mean)} std {_nums(inp.std)}" if inp is not None and inp.mean and inp.std else ""
    return [f"standard TFLite metadata: {shown}{norm}; tledge run infers the contract from it (with tledge[runtime])"]


def _tensor(t: dict) -> str:
    q = t["quant"]
    if t["dtype"] is None:
        return f"{t['name']}  {t['shape']}"
    quant = f", quantised scale {q['scale']:.6g} zero point {q['zero_point']}" if q else ""
    return f"{t['name']}  {t['shape']}  {t['dtype']}{quant}"


def _nums(values) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def describe(info: dict) -> list[str]:
    c = info["contract"]
    lines = [f"file       {info['path']}  ({info['size_bytes'] / 1e6:.2f} MB)"]
    if info["backend"] is None:
        lines.append("backend    none installed (tensor types and quantisation need one: tledge[runtime])")
    else:
        lines.append(f"backend    {info['backend']} ({info['provider']}), {info['threads']} thread(s), "
                     f"loaded in {info['load_ms']:.0f} ms")
    lines += [f"input      {_tensor(t)}" for t in info["inputs"]]
    lines += [f"output     {_tensor(t)}" for t in info["outputs"]]
    if c is None:
        return lines + ["contract   none (no tledge metadata in the file, no tledge.json beside it)"] + [
            f"note       {note}" for note in info.get("notes", [])]
    origin = {"embedded": "embedded in the file", "tledge.json": "from tledge.json beside the file",
              "inferred": "INFERRED from the input tensor (no tledge metadata) and options",
              "given": "given by the caller"}.get(info["contract_origin"], info["contract_origin"])
    lines.append(f"contract   {origin}")
    norm = c["norm"] + (f" mean {_nums(c['mean'])} std {_nums(c['std'])}" if c["norm"] == "custom" else "")
    where = "inside the model (feed raw pixels)" if c["baked"] else "by the runtime"
    fit = c["fit"] + (f" {c['crop_fraction']}" if c["fit"] == "crop" else "")
    lines.append(f"  input    {c['height']}x{c['width']}x{c['channels']} {c['color']} {c['layout']}, "
                 f"resize {c['resize']} ({fit})")
    lines.append(f"  normalise {norm}, {where}")
    independent = isinstance(c.get("extra"), dict) and c["extra"].get("scores") == INDEPENDENT
    lines.append(f"  output   {c['output']}" + (" (independent: a sigmoid each, multi-label)" if independent else ""))
    extra = {k: v for k, v in (c.get("extra") or {}).items() if v is not None}
    cal = extra.pop("score_calibration", None)
    if isinstance(cal, dict) and info["contract_origin"] == STANDARD_ORIGIN:  # TFLite Support's: scores calibrated
        n = sum(s is not None for s in cal.get("sigmoids", []))
        lines.append(f"  scores   calibrated by the file's score calibration ({cal.get('transformation')}, "
                     f"{n} sigmoid(s), default score {cal.get('default_score'):g}), as the TFLite Task Library does")
    threshold = extra.pop("score_threshold", None)
    if threshold is not None and info["contract_origin"] == STANDARD_ORIGIN:
        lines.append(f"  scores   threshold {threshold:g}: tledge run (as MediaPipe and the Task Library) reports no "
                     "score under it without --threshold")
    if extra:  # e.g. the ONNX quantisation types, the int8 repair the export applied
        lines.append("  extra    " + ", ".join(f"{k}={v}" for k, v in sorted(extra.items())))
    labels = c["labels"]
    sep = "; " if any("," in lab for lab in labels[:5]) else ", "  # ImageNet's "tench, Tinca tinca" is one label
    shown = sep.join(labels[:5]) + (f"{sep}..." if len(labels) > 5 else "")
    lines.append(f"labels     {len(labels)}" + (f": {shown}" if labels else " (indices are reported)"))
    if info.get("producer"):
        lines.append(f"producer   {info['producer']}")
    for note in info.get("notes", []):
        lines.append(f"note       {note}")
    return lines


def _folder(folder, as_json: bool) -> int:
    """The export manifest, each file checked against it now. As `tledge run` and bundle judge the folder: exit 2
    when a listed file changed (or a side file is missing); a missing model file is left out with a note."""
    from tledge import artifacts
    from tledge import trust
    from tledge.errors import TledgeError

    m = trust.require(folder, "tledge info")
    rows = trust.summary(m, folder)
    bad = [f"{r['file']}: {r['state']}" for r in rows if r["role"] != "rejected" and
           (r["state"] == "changed" or (r["state"] == "missing" and r["role"] == "side"))]
    gone = [r["file"] for r in rows if r["state"] == "missing" and r["role"] == "model"]
    if as_json:
        from tledge.runtime.outputs import json_text
        from tledge.safejson import finite

        print(json_text(finite({**m.to_dict(), "files": rows, "problems": bad, "missing": gone}), indent=2))
    else:
        src = m.source
        print(f"export     {folder}  (tledge {m.tledge}, {m.created})")
        print(f"source     {src.get('path')}  sha256 {str(src.get('sha256'))[:16]}")
        for r in rows:
            f = r["figures"] or {}
            agree = f.get("top1_agreement")
            what = f"{r['kind']} {r['precision']}" if r["kind"] else r["role"]
            verdict = {"pass": "parity pass", "fail": "parity FAIL", None: ""}[r["verdict"]]
            figures = f", agreement {agree:.3f}" if isinstance(agree, (int, float)) else ""
            state = "" if r["state"] == "ok" else f"  <- {r['state'].upper()}"
            print(f"  {r['file']:30} {what:14} {r['bytes'] / 1e6:8.2f} MB  {verdict}{figures}{state}")
        vouched = [r["file"] for r in rows if r["state"] == "ok" and r["role"] == "model" and r["verdict"] == "pass"]
        print(f"vouched    {', '.join(vouched) or 'none'}")
    if bad:
        raise TledgeError(f"{folder} no longer matches its {artifacts.MANIFEST}: {'; '.join(bad)}")
    if gone:
        from tledge import log

        log.note(f"{', '.join(gone)} listed in {artifacts.MANIFEST} but missing: left out (run and bundle skip "
                 "it too)")
    return 0
