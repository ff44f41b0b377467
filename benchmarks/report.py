"""Rendering of benchmarks/run.py results as Markdown: machine line, summary against the issue's
targets, one block per section. Pure functions of the results dict (no measuring, no imports of
tledge or TensorFlow), so `run.py --render results.json` can redo the tables alone."""
from __future__ import annotations


def _f(v, fmt: str = "{:.2f}", none: str = "–") -> str:
    return none if v is None else fmt.format(v)


def _pct(v) -> str:
    return "–" if v is None else f"{v:+.1f} %"


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def machine_line(m: dict) -> str:
    v = m.get("versions", {})
    flags = f", {'/'.join(m['cpu_flags'])}" if m.get("cpu_flags") else ""
    vers = ", ".join(f"{k} {val}" for k, val in v.items() if val and k in
                     ("tensorflow", "keras", "ai-edge-litert", "onnxruntime", "numpy", "opencv-python-headless"))
    return (f"{m.get('cpu', '?')} ({m.get('usable_cores', m.get('cores', '?'))} cores{flags}, "
            f"{_f(m.get('memory_gib'), '{:.0f}')} GiB); Python {m.get('python', '?')}; {vers}; "
            f"tledge {m.get('tledge_git') or '?'}; {m.get('date', '?')}")


def targets(results: dict) -> list[tuple[str, str, str, str]]:
    """(figure, target, measured, verdict) rows for the summary table."""
    rows = []
    rt = _get(results, "sections", "runtime", "data")
    ex = _get(results, "sections", "export", "data")
    if rt:
        o = rt.get("overhead", {})
        pct, med = o.get("overhead_pct", {}), o.get("overhead_pct_median", {})
        p, c = pct.get("predict(prepared)"), pct.get("classify([image])")
        if p is not None and c is not None:
            rows.append(("per-image overhead over a bare interpreter, batch 1 (predict / classify)", "<= 10 %",
                         f"{_pct(p)} / {_pct(c)} (medians {_pct(med.get('predict(prepared)'))} / "
                         f"{_pct(med.get('classify([image])'))})", "met" if max(p, c) <= 10 else "missed"))
        fo = rt.get("folder", {})
        if "pipeline_vs_slower_stage" in fo:
            ips = fo.get("images_per_s", {})
            r = fo["pipeline_vs_slower_stage"]
            slower = min(ips.get("prepare only", 0), ips.get("infer only", 0))
            rows.append(("folder throughput / slower stage alone", ">= 0.80",
                         f"{r:.2f} ({_f(ips.get('pipeline'), '{:.0f}')} vs {slower:.0f} img/s; median "
                         f"{_f(fo.get('pipeline_vs_slower_stage_median'))})", "met" if r >= 0.8 else "missed"))
        pr = rt.get("process", {})
        a, b = pr.get("runtime (LiteRT int8)"), pr.get("TensorFlow/Keras (.keras)")
        if a and b:
            rows.append(("runtime process: import + load + 1st inference, wall", "< 0.5 s",
                         f"{a['process_s']:.3f} s (TF/Keras {b['process_s']:.2f} s, "
                         f"{b['process_s'] / a['process_s']:.0f}x)", "met" if a["process_s"] < 0.5 else "missed"))
            rows.append(("runtime process: peak RSS", "< 150 MB",
                         f"{a['peak_rss_mb']:.0f} MB (TF/Keras {b['peak_rss_mb']:.0f} MB, "
                         f"{b['peak_rss_mb'] / a['peak_rss_mb']:.1f}x)", "met" if a["peak_rss_mb"] < 150 else "missed"))
        cs = rt.get("cold_start", {})
        if cs.get("ratio"):
            x, t = cs["ratio"], cs["tledge run"]
            rows.append(("cold start `tledge run` on one JPEG / bare LiteRT script: time, peak RSS", "<= 1.5x",
                         f"{x['time_median']}x ({t['median_s']:.3f} s), {x['peak_rss']}x "
                         f"({t['median_peak_rss_mb']:.0f} MB)",
                         "met" if max(x["time_median"], x["peak_rss"]) <= 1.5 else "missed"))
    if ex:
        by = {r["path"]: r for r in ex.get("rows", [])}
        i8, kp, kf = by.get("model_int8.tflite"), by.get("keras Model.predict"), by.get("keras in tf.function")
        if i8 and kp and kf:
            rows.append(("int8 TFLite vs Keras, batch-1 latency", "faster",
                         f"{i8['latency_ms']:.2f} ms: {kp['latency_ms'] / i8['latency_ms']:.0f}x Model.predict, "
                         f"{kf['latency_ms'] / i8['latency_ms']:.1f}x tf.function",
                         "met" if i8["latency_ms"] < kf["latency_ms"] else "missed"))
        files = [r for r in ex.get("rows", []) if "passed" in r]
        if files:
            bad = [r["path"] for r in files if not r["passed"]] + [c["file"] for c in ex.get("conversion_failures", [])]
            rows.append(("parity of every exported file (default thresholds)", "all pass",
                         f"{len(files) - len(bad)}/{len(files) + len(ex.get('conversion_failures', []))} pass" +
                         (f" (failing: {', '.join(bad)})" if bad else ""), "met" if not bad else "missed"))
    return rows


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def render_export(d: dict) -> list[str]:
    out = [f"### Export and inference per format: {d.get('model', '?')}", "",
           f"{d.get('val_images', '?')} val images for parity; export of all files "
           f"{_f(d.get('export_total_s'), '{:.1f}')} s "
           f"(incl. loading, tracing, calibration on {d.get('calib_limit', '?')} images, parity); exported files "
           f"run through `tledge.runtime.load(f, threads={d.get('threads', '?')})`, Keras with TensorFlow's own "
           f"threads. Batch-1 latency: best / median of {d.get('rounds', '?')} interleaved rounds; throughput: "
           f"batch {d.get('batch', '?')}.", ""]
    rows = []
    for r in d.get("rows", []):
        parity = "" if "passed" not in r else ("pass" if r["passed"] else "**FAIL**")
        rows.append([r["path"], _f(r.get("export_s"), "{:.1f}"), _f(r.get("size_mib"), "{:.3f}"),
                     f"{r['latency_ms']:.2f} / {_f(r.get('latency_ms_median'))}",
                     _f(r.get("batch1_images_per_s"), "{:.0f}"), _f(r.get("batch_images_per_s"), "{:.0f}"),
                     _f(r.get("speedup_vs_keras_predict"), "{:.1f}x"),
                     _f(r.get("speedup_vs_keras_tf_function"), "{:.2f}x"), _f(r.get("top1_agreement"), "{:.3f}"),
                     _f(r.get("accuracy"), "{:.3f}"), _f(r.get("max_abs"), "{:.2e}"), parity])
    out += _table(["path", "export s", "MiB", "batch-1 ms (best / median)", "img/s batch 1",
                   f"img/s batch {d.get('batch', '?')}", "x Model.predict", "x tf.function", "top-1 agreement",
                   "accuracy", "max abs", "parity"], rows)
    ref = next((r["reference_accuracy"] for r in d.get("rows", []) if r.get("reference_accuracy") is not None),
               None)
    if ref is not None:
        out += ["", f"Keras (reference) accuracy on the same images: {ref:.3f}."]
    secs = d.get("export_seconds") or {}
    files = {r["path"] for r in d.get("rows", [])}
    conv = sum(v for k, v in secs.items() if k in files and v is not None)
    steps = {k: v for k, v in secs.items() if k not in files and v is not None}
    if secs and d.get("export_total_s") is not None:
        out += ["", f"Export time: {conv:.1f} s converting the files (the 'export s' column)" +
                "".join(f", {v:.1f} s {k}" for k, v in steps.items()) +
                f"; the rest of the {d['export_total_s']:.1f} s is loading the model, tracing, preparing the "
                "calibration / val images, running Keras on them and the parity checks."]
    if d.get("export_options"):
        out.append(f"Export options: {', '.join(f'{k}={v}' for k, v in d['export_options'].items())}.")
    for note in d.get("report_notes", []):
        out.append(f"- note from the export: {note}")
    for c in d.get("conversion_failures", []):
        what = "rejected by parity (the export fell back)" if c["file"].startswith("rejected/") else \
            "conversion failed"
        out.append(f"- {what}: `{c['file']}`: {'; '.join(c['failures'])}")
    return out


def render_runtime(d: dict) -> list[str]:
    o, fo, pr = d.get("overhead", {}), d.get("folder", {}), d.get("process", {})
    out = [f"### Runtime overhead over a bare interpreter (int8 MobileNetV2 224, batch 1, "
           f"{o.get('threads', '?')} threads)", "",
           f"Best / median of {o.get('rounds', '?')} rounds x {o.get('per_round', '?')} calls, variants rotated "
           f"each round.", ""]
    rows = []
    for k, v in o.get("ms", {}).items():
        rows.append([k, f"{v:.3f}", _f(_get(o, "ms_median", k), "{:.3f}"),
                     "—" if k not in o.get("overhead_pct", {}) else
                     f"{_pct(o['overhead_pct'][k])} / {_pct(_get(o, 'overhead_pct_median', k))}"])
    out += _table(["path", "best ms", "median ms", "overhead (best / median)"], rows)
    ps = o.get("python_side_us", {})
    if ps:
        out += ["", "With `invoke()` stubbed out (what each path adds besides the kernels), us per call: " +
                ", ".join(f"{k} {v:.1f}" for k, v in ps.items()) + "."]
    out += ["", "### Folder throughput (decode + resize + infer, real JPEGs), images/s", ""]
    rows = []
    for v in [fo] + list(d.get("folder_variants", [])):
        if not v:
            continue
        ips, med = v.get("images_per_s", {}), v.get("images_per_s_median", {})
        rows.append([f"{v.get('workers', '?')} prep worker(s), {v.get('threads', '?')} inference thread(s)"
                     + (" (default)" if v is fo else ""),
                     *(f"{_f(ips.get(k), '{:.1f}')} / {_f(med.get(k), '{:.1f}')}"
                       for k in ("prepare only", "infer only", "pipeline")),
                     f"{_f(v.get('pipeline_vs_slower_stage'))} / {_f(v.get('pipeline_vs_slower_stage_median'))}",
                     _f(v.get("pipeline_vs_serial"))])
    out += _table(["configuration", "prepare only", "infer only", "pipeline", "pipeline / slower stage",
                   "pipeline / serial"], rows)
    out += ["", f"{fo.get('images', '?')} images, best / median of {fo.get('rounds', '?')} interleaved rounds.", "",
            "### Process start and peak memory: runtime vs TensorFlow", "",
            "`python -c` process: import + load + first inference on a JPEG; medians; peak RSS = VmHWM.", ""]
    rows = []
    for name, v in pr.items():
        if name == "ratios" or not isinstance(v, dict):
            continue
        rows.append([name, f"{v['process_s']:.3f} s", f"{v['import_s']:.3f} s", f"{v['load_s']:.3f} s",
                     f"{v['inference_s']:.3f} s", f"{v['peak_rss_mb']:.0f} MB", "yes" if v.get("tensorflow_imported")
                     else "no", v.get("runs", "?")])
    out += _table(["process", "wall", "import", "load", "1st inference", "peak RSS", "TF imported", "runs"], rows)
    return out


def render_int8(d: dict) -> list[str]:
    out = [f"### int8 fidelity before / after the repairs ({', '.join(d.get('steps', []))})", "",
           "Agreement with the original Keras model; latency: batch 1, best of interleaved rounds.", ""]
    for fam, rows in d.get("families", {}).items():
        out += [f"**{fam}** ({_f(_get(d, 'seconds', fam), '{:.0f}')} s)", ""]
        out += _table(["variant", "top-1 agreement", "accuracy", "max abs", "median per-image max abs", "latency ms"],
                      [[k, f"{r['agreement']:.3f}", f"{r['accuracy']:.3f}", f"{r['max_abs']:.3f}",
                        f"{r['median_abs']:.4f}", _f(r.get("latency_ms"))] for k, r in rows.items()])
        out.append("")
    return out


RENDERERS = {"export": render_export, "runtime": render_runtime, "int8_fidelity": render_int8}


def render_markdown(results: dict) -> str:
    """The whole report as Markdown: machine, summary against the targets, one block per section."""
    lines = ["## tledge benchmarks" + (" (quick run: NOT for comparison)" if results.get("quick") else ""), "",
             f"Machine: {machine_line(results.get('machine', {}))}", ""]
    if results.get("command"):
        lines += [f"Command: `{results['command']}`; wall time {_f(results.get('wall_s'), '{:.0f}')} s.", ""]
    secs = results.get("sections", {})
    others = [s["load"]["other_processes_cores"] for s in secs.values()
              if _get(s, "load", "other_processes_cores") is not None and s.get("status") == "ok"]
    if others:
        span = f"{min(others):.1f}" if f"{min(others):.1f}" == f"{max(others):.1f}" else \
            f"{min(others):.1f}-{max(others):.1f}"
        lines += [f"Other processes kept {span} of the "
                  f"{_get(results, 'machine', 'usable_cores') or '?'} cores busy during the sections "
                  "(machine-wide busy CPU time minus this run's own).", ""]
    rows = targets(results)
    if rows:
        lines += ["### Summary against the targets", ""] + _table(["figure", "target", "measured", ""],
                                                                  [list(r) for r in rows]) + [""]
    for name, s in secs.items():
        if s.get("status") == "ok":
            try:
                lines += RENDERERS[name](s["data"]) + [""]
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                lines += [f"### {name}", "", f"(could not render: {type(exc).__name__}: {exc})", ""]
    lines += ["### Sections", ""]
    lines += _table(["section", "status", "seconds", "other processes (cores)", "note"],
                    [[n, s.get("status", "?"), _f(s.get("seconds"), "{:.0f}"),
                      _f(_get(s, "load", "other_processes_cores"), "{:.1f}"),
                      s.get("reason", "") or f"`{s.get('command', '')}`"] for n, s in secs.items()])
    return "\n".join(lines) + "\n"
