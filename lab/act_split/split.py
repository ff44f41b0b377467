"""hym-mnv3s-s1: weight vs activation share of the int8 error, activation groups, cheap fixes (Keras simulation,
benchmarks/weight_bits.py's helpers: repair.apply + explain.forward_pass with calibration min/max 8-bit grids)."""
import json, re
from common import D, ZOO, Path, each_output, keras, load, macs, np, predict, repair, sys, time  # noqa: F401
import weight_bits as wb
from tledge import stats
from tledge.quant import floatweights
from tledge.quant.ranges import best_hi

m, d = load()
calib = d["calib"]
SETS = {"val": d["val"], "other": d["other"]}
REF = {"val": d["ref_val"], "other": d["ref_other"]}
LOG = D / "results.jsonl"


def evaluate(tag, rep, quant, extra=None):
    t = time.perf_counter()
    res = {}
    for k, x in SETS.items():
        out = wb.int8_activations(rep, quant, x) if quant is not None else predict(rep, x)
        agree = int((np.asarray(out).argmax(1) == REF[k]).sum())
        lo, hi = stats.wilson(agree, len(x))
        res[k] = (agree, len(x), round(agree / len(x), 4), round(lo, 3), round(hi, 3))
    row = {"tag": tag, **res, "eval_s": round(time.perf_counter() - t, 1), **(extra or {})}
    print("RESULT", json.dumps(row), flush=True)
    with open(LOG, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def mse_grids(rep, keep, calib):
    """As wb.int8_grids but the upper bound chosen by ranges.best_hi (the +mse rung) on a subsample."""
    from tledge.quant.explain import forward_pass  # noqa
    names = {op.name for op, _ in repair.nodes(rep) if repair.quantised_output(op, keep) and op.name not in rep.output_names}
    rng = np.random.default_rng(0)
    vals, mm = {n: [] for n in names}, {}
    for name, out in each_output(rep, calib):
        if name in names:
            v = out.ravel()
            vals[name].append(v[rng.integers(0, v.size, min(v.size, 100_000))])
            a, b = mm.get(name, (0.0, 0.0))
            mm[name] = (min(a, float(v.min())), max(b, float(v.max())))
    return {n: (mm[n][0], best_hi(np.concatenate(vals[n]), min(mm[n][0], 0.0), mm[n][1])) for n in names}


def part1(stems):
    F, _ = repair.apply(m, calib, steps=("fold", "exact_input"))
    evaluate("float-fold", F, None)
    for s in stems:
        wb.widen_grid(127)
        t = time.perf_counter()
        rep, _ = repair.apply(m, calib, stem=s, errors=False, act_quant=False)
        evaluate(f"(a) W8-repaired(act_quant=False) A-float stem{s}", rep, None, {"repair_s": round(time.perf_counter() - t, 1)})
        evaluate(f"(b) W-float A8-minmax stem{s}", F, wb.int8_grids(F, set(repair.stem_layers(F, s)), calib))
        for q in (127, 255, 511):
            wb.widen_grid(q)
            t = time.perf_counter()
            rep, _ = repair.apply(m, calib, stem=s, errors=False, act_quant=True)
            rs = round(time.perf_counter() - t, 1)
            keep = set(repair.stem_layers(rep, s))
            evaluate(f"({'c' if q == 127 else 'd'}) W-Q{q}-repaired A8-minmax stem{s}", rep, wb.int8_grids(rep, keep, calib), {"repair_s": rs})
            if q == 127:
                evaluate(f"(c-fw) W8-repaired A-float (same repair as c) stem{s}", rep, None)
        wb.widen_grid(127)
        rep, _ = repair.apply(m, calib, stem=s, errors=False, act_quant=True, ranges="mse")
        keep = set(repair.stem_layers(rep, s))
        evaluate(f"(c-mse) W8-repaired(mse) A8-mse stem{s} [shipped rung sim]", rep, mse_grids(rep, keep, calib))


if __name__ == "__main__":
    T = time.perf_counter()
    part = sys.argv[1]
    if part == "1":
        part1([int(s) for s in sys.argv[2].split(",")])
    print(f"TOTAL {time.perf_counter() - T:.0f} s")


def blocks_and_groups(flat):
    """{group: [layer names]} over the non-stem layers of flat (folded) model."""
    block, se, order = {}, set(), []
    for op, node in repair.nodes(flat):
        n = op.name
        mt = re.match(r"expanded_conv_(\d+)_", n)
        ins = [t._keras_history.operation.name for t in node.input_tensors]
        if mt:
            block[n] = int(mt.group(1))
        elif n.startswith("expanded_conv_"):
            block[n] = 0
        elif n in ("conv_1", "avg_pool", "head") or (ins and block.get(ins[0]) == 99):
            block[n] = 99  # head
        else:
            block[n] = block.get(ins[0], -1) if ins else -1
        if ("squeeze_excite" in n and not n.endswith("_squeeze_excite_mul")) or (ins and ins[0] in se and not mt):
            se.add(n)
        order.append((op, node, ins))
    stem = set(repair.stem_layers(flat, 6))
    quantised = {op.name for op, _, _ in order if repair.requantised(op)} - stem - set(flat.output_names)
    types = {op.name: type(op).__name__ for op, _, _ in order}
    g = {
        "SE chain (pool, convs, relu, hard-sigmoid add/relu6/mul)": se,
        "SE gate multiply (*_squeeze_excite_mul)": {n for n in block if n.endswith("_squeeze_excite_mul")},
        "hard-swish outputs (activation_*)": {n for n in block if types[n] == "Activation" and n.startswith("activation")},
        "hard-swish inputs (conv/dw outputs before hswish)": {ins[0] for op, _, ins in order if types[op.name] == "Activation" and op.name.startswith("activation") and ins},
        "residual Adds (expanded_conv_*_add)": {n for n in block if re.match(r"expanded_conv_\d+_add$", n)},
        "project outputs (*_project)": {n for n in block if n.endswith("_project")},
        "head (conv_1, activation_17, avg_pool)": {n for n in block if block[n] == 99},
        "blocks 9-10 + head": {n for n in block if block[n] in (9, 10, 99)},
        "blocks 8-10 + head": {n for n in block if block[n] in (8, 9, 10, 99)},
        "blocks 6-10 + head": {n for n in block if block[n] in (6, 7, 8, 9, 10, 99)},
        "blocks 1-5 (non-stem part)": {n for n in block if 1 <= block[n] <= 5},
    }
    g["SE all (chain + gate multiply)"] = g["SE chain (pool, convs, relu, hard-sigmoid add/relu6/mul)"] | g["SE gate multiply (*_squeeze_excite_mul)"]
    g["SE all + head"] = g["SE all (chain + gate multiply)"] | g["head (conv_1, activation_17, avg_pool)"]
    return {k: sorted(v & quantised) for k, v in g.items()}, quantised


def mac_share(flat, names, mc, tot):
    fs = set(floatweights.float_set(flat, names))
    return round(sum(mc.get(n, 0) for n in fs) / tot * 100, 2)


def part2():
    F, _ = repair.apply(m, calib, steps=("fold", "exact_input"))
    mc = macs(F); tot = sum(mc.values())
    groups, quantised = blocks_and_groups(F)
    json.dump(groups, open(D / "groups.json", "w"), indent=1)
    full = wb.int8_grids(F, set(repair.stem_layers(F, 6)), calib)
    print("quantised tensors outside stem6:", len(full), len(quantised), flush=True)
    for name, names in groups.items():
        extra = {"tensors": len(names), "float_macs_pct": mac_share(F, names, mc, tot)}
        evaluate(f"[Q2 W-float stem6] {name} FLOAT, rest int8", F, {k: v for k, v in full.items() if k not in names}, extra)
        evaluate(f"[Q2 W-float stem6] ONLY {name} int8", F, {k: v for k, v in full.items() if k in names}, extra)


def part3(which):
    F, _ = repair.apply(m, calib, steps=("fold", "exact_input"))
    mc = macs(F); tot = sum(mc.values())
    groups, _ = blocks_and_groups(F)
    for name in which:
        names = groups[name]
        t = time.perf_counter()
        rep, _ = repair.apply(m, calib, stem=6, keep=names, errors=False, act_quant=True)
        rs = round(time.perf_counter() - t, 1)
        keep = set(repair.stem_layers(rep, 6)) | set(floatweights.float_set(rep, names))
        evaluate(f"[Q3 repaired stem6, keep] {name}", rep, wb.int8_grids(rep, keep, calib),
                 {"repair_s": rs, "float_macs_pct": mac_share(F, names, mc, tot), "kept_layers": len(keep)})


if __name__ == "__main__" and sys.argv[1] in ("2", "3"):
    T = time.perf_counter()
    part2() if sys.argv[1] == "2" else part3(sys.argv[2].split("|"))
    print(f"TOTAL {time.perf_counter() - T:.0f} s")


def part4():
    """Per-tensor range diagnostics on the float-weight folded model; oracle ranges; flip direction."""
    F, _ = repair.apply(m, calib, steps=("fold", "exact_input"))
    keep = set(repair.stem_layers(F, 6))
    full = wb.int8_grids(F, keep, calib)
    stats_ = {n: dict(s2=0.0, e2=0.0, n=0, clip=0, tot=0, p=[]) for n in full}
    for name_, x, k in (("calib", calib, "cal"), ("other", d["other"][::4], "oth")):
        for name, out in each_output(F, x):
            if name in full:
                lo, hi = full[name]
                s = stats_[name]
                if k == "cal":
                    q = repair.fake_quant(out.copy(), lo, hi)
                    s["s2"] += float((out.astype(np.float64) ** 2).sum()); s["e2"] += float(((q - out).astype(np.float64) ** 2).sum())
                    s["p"].append(np.percentile(np.abs(out), 99.9))
                else:
                    s["clip"] += int(((out < min(lo, 0)) | (out > hi)).sum()); s["tot"] += out.size
    rows = []
    for n, (lo, hi) in full.items():
        s = stats_[n]
        rows.append((n, lo, hi, float(np.mean(s["p"])), 10 * np.log10(s["s2"] / max(s["e2"], 1e-30)), s["clip"] / max(s["tot"], 1)))
    rows.sort(key=lambda r: r[4])
    with open(D / "tensor_stats.txt", "w") as f:
        for r in rows:
            f.write(f"{r[0]:45s} lo={r[1]:9.3f} hi={r[2]:9.3f} p99.9|x|={r[3]:8.3f} hi/p99.9={max(abs(r[1]),r[2])/max(r[3],1e-9):6.1f} "
                    f"SQNR1={r[4]:6.1f}dB clipped(other)={r[5]*100:.3f}%\n")
    # oracle ranges: min/max over calib + val + other (no clipping on the evaluated photos)
    allx = np.concatenate([calib, d["val"], d["other"]])
    evaluate("[diag] (b) W-float A8 stem6, ranges over calib+val+other (no clipping)", F, wb.int8_grids(F, keep, allx))
    for tag, rep, q in (("(b)", F, full),):
        for k, x in SETS.items():
            p = np.asarray(wb.int8_activations(rep, q, x)); pf = np.asarray(predict(F, x))
            lf = np.log(pf[:, 1] + 1e-12) - np.log(pf[:, 0] + 1e-12); lq = np.log(p[:, 1] + 1e-12) - np.log(p[:, 0] + 1e-12)
            fl = p.argmax(1) != pf.argmax(1)
            print(f"DIAG {tag} {k}: flips 0->1 {int((fl & (pf.argmax(1) == 0)).sum())}, 1->0 {int((fl & (pf.argmax(1) == 1)).sum())}; "
                  f"logit-diff shift mean {np.mean(lq - lf):+.2f} sd {np.std(lq - lf):.2f}; |float logit diff| median {np.median(np.abs(lf)):.2f}", flush=True)


if __name__ == "__main__" and sys.argv[1] == "4":
    T = time.perf_counter(); part4(); print(f"TOTAL {time.perf_counter() - T:.0f} s")


def part5():
    """Flip direction and logit-difference shift of int8 vs float on calib / val / other; a logit offset estimated on
    the calibration photos (= a Dense-bias change: b1 -= delta/2, b0 += delta/2) applied to val / other."""
    F, _ = repair.apply(m, calib, steps=("fold", "exact_input"))
    wb.widen_grid(127)
    rep, _ = repair.apply(m, calib, stem=6, errors=False, act_quant=True)
    cfgs = {"(b) W-float A8 stem6": (F, wb.int8_grids(F, set(repair.stem_layers(F, 6)), calib)),
            "(c) W8-repaired A8 stem6": (rep, wb.int8_grids(rep, set(repair.stem_layers(rep, 6)), calib))}
    allsets = {"calib": calib, **SETS}
    ld = lambda p: np.log(p[:, 1] + 1e-12) - np.log(p[:, 0] + 1e-12)
    for tag, (r, q) in cfgs.items():
        shifts = {}
        for k, x in allsets.items():
            pf = np.asarray(predict(F, x)); p = np.asarray(wb.int8_activations(r, q, x))
            lf, lq = ld(pf), ld(p)
            fl = (lq > 0) != (lf > 0)
            shifts[k] = (lf, lq)
            print(f"DIAG {tag} {k}: flips ants->bees {int((fl & (lf < 0)).sum())}, bees->ants {int((fl & (lf > 0)).sum())}; "
                  f"logit-diff shift mean {np.mean(lq - lf):+.2f} median {np.median(lq - lf):+.2f} sd {np.std(lq - lf):.2f}; "
                  f"median margin float-ants {np.median(-lf[lf < 0]):.2f} float-bees {np.median(lf[lf > 0]):.2f} "
                  f"(n {int((lf < 0).sum())}/{int((lf > 0).sum())})", flush=True)
        for est in ("mean", "median"):
            lf, lq = shifts["calib"]
            delta = float(getattr(np, est)(lq - lf))
            res = {}
            for k in SETS:
                lf, lq = shifts[k]
                agree = int(((lq - delta > 0) == (lf > 0)).sum()); n = len(lf)
                lo, hi = stats.wilson(agree, n)
                res[k] = (agree, n, round(agree / n, 4), round(lo, 3), round(hi, 3))
            row = {"tag": f"[Q3 offset] {tag} + logit offset -{delta:.2f} ({est} shift on 245 calib photos)", **res}
            print("RESULT", json.dumps(row), flush=True)
            with open(LOG, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__" and sys.argv[1] == "5":
    T = time.perf_counter(); part5(); print(f"TOTAL {time.perf_counter() - T:.0f} s")


def forward_levels(model, x, quant, levels):
    """explain.forward_pass with a per-tensor number of levels (default 256)."""
    acts = {id(t): x for t in model.inputs}
    for op, node in repair.nodes(model):
        args, kw = node.arguments.fill_in(acts)
        out = repair.apply_layer(op, args, kw)
        if op.name in quant:
            out = repair.fake_quant(np.asarray(out), *quant[op.name], levels=levels.get(op.name, 256))
        for t in node.outputs:
            acts[id(t)] = out
    return out


def part6():
    F, _ = repair.apply(m, calib, steps=("fold", "exact_input"))
    mc = macs(F); tot = sum(mc.values())
    groups, _ = blocks_and_groups(F)
    wb.widen_grid(127)
    rep, _ = repair.apply(m, calib, stem=6, errors=False, act_quant=True)
    keep = set(repair.stem_layers(rep, 6))
    q = wb.int8_grids(rep, keep, calib)
    # the +mse grids against min/max on the same model
    mq = mse_grids(rep, keep, calib)
    cut = {n: mq[n][1] / q[n][1] for n in q if q[n][1] > 0}
    print("DIAG mse/minmax upper bound: tensors cut", sum(v < 0.999 for v in cut.values()), "of", len(cut),
          "min fraction", round(min(cut.values()), 3), flush=True)
    orig = wb.int8_activations
    for name, names in [("ALL tensors", list(q)), ("blocks 6-10 + head", groups["blocks 6-10 + head"]),
                        ("blocks 8-10 + head", groups["blocks 8-10 + head"]),
                        ("residual stream (project outputs + residual Adds)", groups["project outputs (*_project)"] + groups["residual Adds (expanded_conv_*_add)"]),
                        ("hard-swish inputs + outputs", groups["hard-swish inputs (conv/dw outputs before hswish)"] + groups["hard-swish outputs (activation_*)"]),
                        ("SE gate multiply", groups["SE gate multiply (*_squeeze_excite_mul)"])]:
        lv = {n: 65536 for n in names}
        wb.int8_activations = lambda r, qq, x: np.concatenate([np.asarray(forward_levels(r, x[i:i + 100], qq, lv)) for i in range(0, len(x), 100)])
        evaluate(f"[Q3 A16] W8-repaired(A8 repair) stem6, 16-bit activations on {name}, rest 8-bit", rep, q,
                 {"tensors16": len(names), "macs_reading_or_writing_16bit_pct": mac_share(F, names, mc, tot)})
    wb.int8_activations = orig


if __name__ == "__main__" and sys.argv[1] == "6":
    T = time.perf_counter(); part6(); print(f"TOTAL {time.perf_counter() - T:.0f} s")


def part7(which):
    """Weights int8 everywhere outside stem6; activations of group G unrounded (~16-bit) in the repair AND in the
    evaluation (repair.quantised_output patched), the rest 8-bit min/max."""
    F, _ = repair.apply(m, calib, steps=("fold", "exact_input"))
    mc = macs(F); tot = sum(mc.values())
    groups, quantised = blocks_and_groups(F)
    groups["ALL tensors"] = sorted(quantised)
    groups["residual stream (project outputs + residual Adds)"] = groups["project outputs (*_project)"] + groups["residual Adds (expanded_conv_*_add)"]
    groups["hard-swish inputs + outputs"] = groups["hard-swish inputs (conv/dw outputs before hswish)"] + groups["hard-swish outputs (activation_*)"]
    orig = repair.quantised_output
    wb.widen_grid(127)
    for name in which:
        G = set(groups[name])
        repair.quantised_output = lambda op, keep, G=G: op.name not in G and orig(op, keep)
        t = time.perf_counter()
        rep, _ = repair.apply(m, calib, stem=6, errors=False, act_quant=True)
        rs = round(time.perf_counter() - t, 1)
        q = wb.int8_grids(rep, set(repair.stem_layers(rep, 6)), calib)
        evaluate(f"[Q3 W8, A-float/16 on G in repair+eval] {name}", rep, q,
                 {"repair_s": rs, "tensors_G": len(G), "rounded_tensors": len(q), "macs_next_to_G_pct": mac_share(F, sorted(G), mc, tot)})
    repair.quantised_output = orig


if __name__ == "__main__" and sys.argv[1] == "7":
    T = time.perf_counter(); part7(sys.argv[2].split("|")); print(f"TOTAL {time.perf_counter() - T:.0f} s")


def file_eval(tag, data, extra=None, fmt="tflite"):
    from lab.quant.quick import Runner
    r = Runner(data, fmt, threads=2)
    t = time.perf_counter()
    res = {}
    for k, x in SETS.items():
        agree = int((r.predict(x).argmax(1) == REF[k]).sum())
        lo, hi = stats.wilson(agree, len(x))
        res[k] = (agree, len(x), round(agree / len(x), 4), round(lo, 3), round(hi, 3))
    row = {"tag": tag, **res, "infer_s": round(time.perf_counter() - t, 1), "batch1_ms": round(r.latency_ms(SETS["val"]), 3),
           "bytes": len(data), **(extra or {})}
    print("RESULT", json.dumps(row), flush=True)
    with open(LOG, "a") as f:
        f.write(json.dumps(row) + "\n")
    (D / (re.sub(r"\W+", "_", tag)[:60] + "." + fmt)).write_bytes(data)


def part8(which):
    import tensorflow as tf
    from tledge.quant import selective, sensitivity
    F, _ = repair.apply(m, calib, steps=("fold", "exact_input"))
    groups, _ = blocks_and_groups(F)
    wb.widen_grid(127)
    file_eval("[file] fp32 TFLite (shipped export)", (ZOO / "exports" / "hym-mnv3s-s1" / "model_fp32.tflite").read_bytes())
    for name in which:
        if name == "int16x8":
            t = time.perf_counter()
            conv = selective.tflite_converter(m, calib)
            conv.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
            conv.inference_input_type = conv.inference_output_type = tf.float32
            file_eval("[file] int16x8 TFLite of the Keras model (16-bit activations, 8-bit weights, no repair)", conv.convert(),
                      {"convert_s": round(time.perf_counter() - t, 1)})
            continue
        names = groups[name] if name != "none" else []
        t = time.perf_counter()
        rep, _ = repair.apply(m, calib, stem=6, keep=names, errors=False, act_quant=True)
        cal = selective.calibrate_tflite(rep, calib)
        ops = selective.tflite_graph(cal)
        keep = selective.tflite_stem(cal, 6) + sensitivity.tflite_keep_float(ops, names)
        data = selective.quantize_tflite(cal, keep_float=list(dict.fromkeys(keep)), float_ops=("HARD_SWISH",))
        file_eval(f"[file] repaired stem6 minmax, float: {name}", data,
                  {"convert_s": round(time.perf_counter() - t, 1), "denylisted_tensors": len(set(keep)), "float_ops": sum(1 for o in selective.tflite_ops(data) if o[0] in ("CONV_2D", "DEPTHWISE_CONV_2D")) })


if __name__ == "__main__" and sys.argv[1] == "8":
    T = time.perf_counter(); part8(sys.argv[2].split("|")); print(f"TOTAL {time.perf_counter() - T:.0f} s")


def part9(which):
    from lab.quant import quick
    from tledge.quant import selective, sensitivity
    from tledge.quant.qdqgraph import layer_of
    F, _ = repair.apply(m, calib, steps=("fold", "exact_input"))
    mc = macs(F); tot = sum(mc.values())
    groups, _ = blocks_and_groups(F)
    wb.widen_grid(127)
    for name in which:
        if name == "onnx-a16w8":
            import onnxruntime.quantization as q
            orig = q.quantize_static
            def a16(*a, **kw):
                kw["activation_type"] = q.QuantType.QInt16
                kw["extra_options"] = {**(kw.get("extra_options") or {}), "UseQDQContribOps": True}
                return orig(*a, **kw)
            q.quantize_static = a16
            t = time.perf_counter()
            data = quick.onnx_int8(quick.onnx_float(m), calib)
            q.quantize_static = orig
            file_eval("[file] ONNX QDQ A16W8 (int16 activations, int8 per-channel weights, MinMax, no repair)", data,
                      {"convert_s": round(time.perf_counter() - t, 1)}, fmt="onnx")
            file_eval("[file] ONNX fp32 (shipped export)", ZOO / "exports" / "hym-mnv3s-s1" / "model_fp32.onnx".read_bytes(), fmt="onnx")
            continue
        G = set(groups[name])
        t = time.perf_counter()
        rep, _ = repair.apply(m, calib, stem=6, keep=sorted(G), errors=False, act_quant=True)
        cal = selective.calibrate_tflite(rep, calib)
        ops = selective.tflite_graph(cal)
        tfl = sorted({c for _, out, _ in ops for c in {layer_of(n) for n in out.split(";")} if re.sub(r"_\d+$", "", c) in G})
        keep = list(dict.fromkeys(selective.tflite_stem(cal, 6) + sensitivity.tflite_keep_float(ops, tfl)))
        data = selective.quantize_tflite(cal, keep_float=keep, float_ops=("HARD_SWISH",))
        nq = sum(1 for d_ in __import__("ai_edge_litert.interpreter", fromlist=["Interpreter"]).Interpreter(model_content=data).get_tensor_details() if d_["dtype"] == np.int8)
        file_eval(f"[file] repaired stem6 minmax + float {name} (TFLite denylist)", data,
                  {"convert_s": round(time.perf_counter() - t, 1), "denylisted_tensors": len(keep), "tflite_layers_matched": len(tfl),
                   "int8_tensors_in_file": nq, "float_macs_pct": mac_share(F, sorted(G), mc, tot)})


if __name__ == "__main__" and sys.argv[1] == "9":
    T = time.perf_counter(); part9(sys.argv[2].split("|")); print(f"TOTAL {time.perf_counter() - T:.0f} s")
