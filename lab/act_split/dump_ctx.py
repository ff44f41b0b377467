"""Run a zoo export (argv[1], default hym-mnv3s-s1) up to its int8 loop and save what the loop gets: pixel model,
calib, val, other."""
import sys
import time
from common import D as OUT, ZOO, np
import weight_bits, int8_zoo

OUT.mkdir(parents=True, exist_ok=True)

def measure(ctx):
    t = time.perf_counter()
    model, calib, sets, ref = weight_bits.eval_sets(ctx)
    model.save(OUT / "pixel.keras")
    np.savez(OUT / "data.npz", calib=calib, val=sets["val"], other=sets["other"], ref_val=ref["val"], ref_other=ref["other"])
    print("saved", calib.shape, sets["val"].shape, sets["other"].shape, f"{time.perf_counter()-t:.0f}s", flush=True)

int8_zoo.at_int8_loop(sys.argv[1] if len(sys.argv) > 1 else "hym-mnv3s-s1", ZOO, OUT / "exports", measure)
