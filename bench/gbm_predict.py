"""The outside reference for `cargo bench --bench kernels -- imported_gbm`: each library's
own in-process predict on the same models and the same 1000 rows (the fixture rows cycled),
one thread, per row. Run with the fixtures' virtualenv (training/gbm/make_fixtures.sh):

    "${GBM_VENV:-/tmp/venv10}/bin/python" bench/gbm_predict.py
"""

import json
import os
import statistics
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
GBM = os.path.join(HERE, "..", "training", "gbm")
BATCH = 1000


def rows(stem):
    doc = json.load(open(os.path.join(GBM, f"{stem}.expected.json")))
    xs = [[np.nan if v is None else v for v in r["x"]] for r in doc["rows"]]
    return np.array([xs[i % len(xs)] for i in range(BATCH)], dtype=np.float64)


def per_row(fn, repeat=30):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) / BATCH * 1e6


def main():
    import lightgbm as lgb
    import onnxruntime as ort
    import xgboost as xgb

    out = {}
    for stem in ["xgb_100x6", "xgb_large"]:
        bst = xgb.Booster(model_file=os.path.join(GBM, f"{stem}.json"))
        bst.set_param({"nthread": 1})
        x = rows(stem)
        names = bst.feature_names
        out[f"xgboost {stem} DMatrix+predict"] = per_row(
            lambda: bst.predict(xgb.DMatrix(x, missing=np.nan, nthread=1, feature_names=names))
        )
        out[f"xgboost {stem} inplace_predict"] = per_row(lambda: bst.inplace_predict(x, missing=np.nan))
    bst = lgb.Booster(model_file=os.path.join(GBM, "lgb_large.txt"))
    x = rows("lgb_large")
    out["lightgbm lgb_large predict"] = per_row(lambda: bst.predict(x, num_threads=1))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(os.path.join(GBM, "onnx_large.onnx"), so, providers=["CPUExecutionProvider"])
    x32 = rows("onnx_large").astype(np.float32)
    name = sess.get_inputs()[0].name
    out["onnxruntime onnx_large run"] = per_row(lambda: sess.run(None, {name: x32}))
    for k, v in out.items():
        print(f"{k:45s} {v:8.3f} µs/row (batch {BATCH}, 1 thread, median of 30)")


if __name__ == "__main__":
    main()
