"""XGBoost, LightGBM and ONNX (skl2onnx) fixtures with reference predictions from each
format's own library, on: held-out rows, random rows up to 10 % outside the training range,
rows at the models' split thresholds and their f32 (and f64) neighbours, and rows with
missing (NaN) features.

Writes <name>.<ext> (the model as the library saved it) and <name>.expected.json:
{"model", "format", "features", "classes", "task", "rows": [{"kind", "x", "label" |
"prediction", "probabilities"}]}. A NaN feature is written as null.
"""

import json
import math

import numpy as np
from sklearn.datasets import load_diabetes, load_iris, make_classification
from sklearn.model_selection import train_test_split

rng = np.random.default_rng(20261206)


def f32_neighbours(t):
    t32 = np.float32(t)
    out = {float(t32), float(np.nextafter(t32, np.float32(np.inf))), float(np.nextafter(t32, np.float32(-np.inf)))}
    out.add(float(t))
    out.add(float(np.nextafter(np.float64(t), np.inf)))
    out.add(float(np.nextafter(np.float64(t), -np.inf)))
    return sorted(out)


def probe_rows(X_train, X_test, splits, n_random=80, n_split_rows=120, n_missing=60):
    """(kind, row) pairs; rows are float64 with NaN for missing."""
    rows = [("heldout", r) for r in X_test[:80]]
    lo = np.nanmin(X_train, axis=0)
    hi = np.nanmax(X_train, axis=0)
    span = hi - lo
    for _ in range(n_random):
        rows.append(("random", rng.uniform(lo - 0.1 * span, hi + 0.1 * span)))
    splits = list(splits)
    rng.shuffle(splits)
    base = X_test[: max(1, len(X_test))]
    count = 0
    for feature, threshold in splits:
        if count >= n_split_rows:
            break
        if not np.isfinite(threshold):
            continue
        for v in f32_neighbours(threshold):
            row = np.array(base[count % len(base)], dtype=np.float64)
            row[feature] = v
            rows.append(("threshold", row))
            count += 1
    for i in range(n_missing):
        row = np.array(X_test[i % len(X_test)], dtype=np.float64)
        k = 1 + i % max(1, min(4, row.shape[0] - 1))
        idx = rng.choice(row.shape[0], size=k, replace=False)
        row[idx] = np.nan
        rows.append(("missing", row))
    # a row of all NaN, and exact zeros (LightGBM's zero-as-missing)
    rows.append(("missing", np.full(X_test.shape[1], np.nan)))
    rows.append(("zero", np.zeros(X_test.shape[1])))
    z = np.array(X_test[0], dtype=np.float64)
    z[0] = 1e-40
    rows.append(("zero", z))
    return rows


def jnum(v):
    v = float(v)
    return None if math.isnan(v) else v


def write(name, fmt, model_file, features, classes, task, kinds, X, labels, probabilities, predictions):
    out_rows = []
    for i, (kind, row) in enumerate(zip(kinds, X)):
        r = {"kind": kind, "x": [jnum(v) for v in row]}
        if task == "classification":
            r["label"] = str(labels[i])
            r["probabilities"] = [jnum(p) for p in probabilities[i]]
        else:
            r["prediction"] = float(predictions[i])
        out_rows.append(r)
    doc = {
        "model": model_file,
        "format": fmt,
        "features": features,
        "classes": classes,
        "task": task,
        "rows": out_rows,
    }
    with open(f"{name}.expected.json", "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    print(f"{name}: {len(out_rows)} rows")


def with_nan(X, frac=0.15):
    X = np.array(X, dtype=np.float64)
    mask = rng.random(X.shape) < frac
    X[mask] = np.nan
    return X


def datasets():
    iris = load_iris()
    Xi, yi = iris.data, iris.target
    Xb, yb = make_classification(n_samples=1200, n_features=8, n_informative=5, random_state=7)
    diab = load_diabetes()
    Xr, yr = diab.data, diab.target
    Xl, yl = make_classification(n_samples=3000, n_features=12, n_informative=8, random_state=11)
    return {
        "iris": (Xi, yi, list(iris.feature_names), [str(n) for n in iris.target_names]),
        "binary": (Xb, yb, [f"f{i}" for i in range(Xb.shape[1])], None),
        "regression": (Xr, yr, [n for n in diab.feature_names], None),
        "large": (Xl, yl, [f"x{i}" for i in range(Xl.shape[1])], None),
    }


# ---------------------------------------------------------------- XGBoost
def xgb_splits(path):
    doc = json.load(open(path))
    out = []
    for tree in doc["learner"]["gradient_booster"]["model"]["trees"]:
        for l, f, c in zip(tree["left_children"], tree["split_indices"], tree["split_conditions"]):
            if l != -1:
                out.append((f, c))
    return out


def make_xgboost(data):
    import xgboost as xgb

    def fit(name, key, params, rounds, missing=False, feature_names=True):
        X, y, names, class_names = data[key]
        if missing:
            X = with_nan(X)
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=1)
        dtrain = xgb.DMatrix(Xtr, label=ytr, feature_names=names if feature_names else None)
        bst = xgb.train(dict(params, seed=1, nthread=1), dtrain, num_boost_round=rounds)
        path = f"{name}.json"
        bst.save_model(path)
        rows = probe_rows(Xtr, Xte, xgb_splits(path))
        kinds = [k for k, _ in rows]
        Xp = np.array([r for _, r in rows])
        dm = xgb.DMatrix(Xp, missing=np.nan, feature_names=names if feature_names else None)
        pred = bst.predict(dm)
        obj = params["objective"]
        feats = names if feature_names else [f"f{i}" for i in range(X.shape[1])]
        if obj in ("binary:logistic",):
            p = pred.astype(np.float32)
            probs = np.stack([np.float32(1) - p, p], axis=1)
            labels = (p > 0.5).astype(int)
            write(name, "xgboost", path, feats, ["0", "1"], "classification", kinds, Xp, labels, probs, None)
        elif obj == "multi:softprob":
            labels = np.argmax(pred, axis=1)
            write(name, "xgboost", path, feats, [str(i) for i in range(pred.shape[1])], "classification", kinds, Xp, labels, pred, None)
        elif obj == "multi:softmax":
            margins = bst.predict(dm, output_margin=True)
            labels = pred.astype(int)
            assert (labels == np.argmax(margins, axis=1)).all()
            # probabilities are not what this objective predicts: only the label is compared
            write(name, "xgboost", path, feats, [str(i) for i in range(margins.shape[1])], "classification", kinds, Xp, labels, np.full(margins.shape, np.nan), None)
        else:
            write(name, "xgboost", path, feats, None, "regression", kinds, Xp, None, None, pred)

    fit("xgb_binary", "binary", {"objective": "binary:logistic", "max_depth": 4, "eta": 0.3}, 50)
    fit("xgb_iris", "iris", {"objective": "multi:softprob", "num_class": 3, "max_depth": 3}, 30)
    fit("xgb_iris_softmax", "iris", {"objective": "multi:softmax", "num_class": 3, "max_depth": 3}, 20)
    fit("xgb_regression", "regression", {"objective": "reg:squarederror", "max_depth": 5, "eta": 0.1}, 100)
    fit("xgb_logitraw", "binary", {"objective": "binary:logitraw", "max_depth": 3}, 30, feature_names=False)
    fit("xgb_poisson", "regression", {"objective": "count:poisson", "max_depth": 3}, 40)
    fit("xgb_missing", "binary", {"objective": "binary:logistic", "max_depth": 5}, 60, missing=True)
    fit("xgb_100x6", "large", {"objective": "binary:logistic", "max_depth": 6, "eta": 0.1}, 100)
    fit("xgb_large", "large", {"objective": "binary:logistic", "max_depth": 8, "eta": 0.1, "min_child_weight": 8, "subsample": 0.6}, 300)


# ---------------------------------------------------------------- LightGBM
def lgb_splits(bst):
    out = []

    def walk(node):
        if "split_feature" in node:
            out.append((node["split_feature"], node["threshold"]))
            walk(node["left_child"])
            walk(node["right_child"])

    for t in bst.dump_model()["tree_info"]:
        walk(t["tree_structure"])
    return out


def make_lightgbm(data):
    import lightgbm as lgb

    def fit(name, key, params, rounds, missing=False, zeros=False):
        X, y, names, class_names = data[key]
        X = np.array(X, dtype=np.float64)
        if missing:
            X = with_nan(X)
        if zeros:
            X[rng.random(X.shape) < 0.2] = 0.0
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=1)
        ds = lgb.Dataset(Xtr, label=ytr, feature_name=[n.replace(" ", "_") for n in names])
        bst = lgb.train(dict(params, seed=1, num_threads=1, verbose=-1, deterministic=True), ds, num_boost_round=rounds)
        path = f"{name}.txt"
        bst.save_model(path)
        rows = probe_rows(Xtr, Xte, lgb_splits(bst))
        kinds = [k for k, _ in rows]
        Xp = np.array([r for _, r in rows])
        pred = bst.predict(Xp)
        feats = bst.feature_name()
        obj = params["objective"]
        if obj == "binary":
            probs = np.stack([1.0 - pred, pred], axis=1)
            labels = (pred > 0.5).astype(int)
            write(name, "lightgbm", path, feats, ["0", "1"], "classification", kinds, Xp, labels, probs, None)
        elif obj == "multiclass":
            labels = np.argmax(pred, axis=1)
            write(name, "lightgbm", path, feats, [str(i) for i in range(pred.shape[1])], "classification", kinds, Xp, labels, pred, None)
        else:
            write(name, "lightgbm", path, feats, None, "regression", kinds, Xp, None, None, pred)

    fit("lgb_binary", "binary", {"objective": "binary", "num_leaves": 15}, 50)
    fit("lgb_iris", "iris", {"objective": "multiclass", "num_class": 3, "num_leaves": 7, "min_data_in_leaf": 5}, 30)
    fit("lgb_regression", "regression", {"objective": "regression", "num_leaves": 15}, 80)
    fit("lgb_missing", "binary", {"objective": "binary", "num_leaves": 15}, 50, missing=True)
    fit("lgb_zero_missing", "binary", {"objective": "binary", "num_leaves": 15, "zero_as_missing": True}, 40, zeros=True)
    fit("lgb_rf", "regression", {"objective": "regression", "boosting": "rf", "bagging_freq": 1, "bagging_fraction": 0.7, "feature_fraction": 0.8, "num_leaves": 15}, 40)
    fit("lgb_large", "large", {"objective": "binary", "num_leaves": 48, "max_depth": 8, "learning_rate": 0.05, "min_data_in_leaf": 10}, 300)


# ---------------------------------------------------------------- ONNX
def onnx_splits(path):
    import onnx

    model = onnx.load(path)
    out = []
    for node in model.graph.node:
        if node.op_type in ("TreeEnsembleClassifier", "TreeEnsembleRegressor"):
            attrs = {a.name: a for a in node.attribute}
            modes = [m.decode() for m in attrs["nodes_modes"].strings]
            for m, f, v in zip(modes, attrs["nodes_featureids"].ints, attrs["nodes_values"].floats):
                if m != "LEAF":
                    out.append((f, v))
    return out


def make_onnx(data):
    import onnxruntime as ort
    from skl2onnx import to_onnx
    from sklearn.ensemble import (
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )

    def fit(name, key, est, zipmap=False, missing=False, string_labels=False):
        X, y, names, class_names = data[key]
        X = np.array(X, dtype=np.float64)
        if missing:
            X = with_nan(X)
        if string_labels and class_names:
            y = np.array(class_names)[y]
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=1)
        est.fit(Xtr, ytr)
        is_clf = hasattr(est, "predict_proba")
        options = {id(est): {"zipmap": zipmap}} if is_clf else None
        onx = to_onnx(est, Xtr[:1].astype(np.float32), options=options)
        path = f"{name}.onnx"
        with open(path, "wb") as f:
            f.write(onx.SerializeToString())
        rows = probe_rows(Xtr, Xte, onnx_splits(path))
        kinds = [k for k, _ in rows]
        Xp = np.array([r for _, r in rows])
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0].name
        outs = sess.run(None, {inp: Xp.astype(np.float32)})
        feats = [n.replace(" (cm)", "").replace(" ", "_") for n in names]
        if is_clf:
            labels = outs[0]
            if zipmap:
                keys = list(outs[1][0].keys())
                probs = np.array([[d[k] for k in keys] for d in outs[1]], dtype=np.float32)
                classes = [str(k) for k in keys]
            else:
                probs = outs[1]
                classes = [str(c) for c in est.classes_]
            write(name, "onnx", path, feats, classes, "classification", kinds, Xp, labels, probs, None)
        else:
            write(name, "onnx", path, feats, None, "regression", kinds, Xp, None, None, outs[0].reshape(-1))

    fit("onnx_rf_iris", "iris", RandomForestClassifier(n_estimators=50, max_depth=6, random_state=1))
    fit("onnx_rf_iris_zipmap", "iris", RandomForestClassifier(n_estimators=20, random_state=2), zipmap=True, string_labels=True)
    fit("onnx_rf_binary", "binary", RandomForestClassifier(n_estimators=40, max_depth=8, random_state=1))
    fit("onnx_gb_binary", "binary", GradientBoostingClassifier(n_estimators=60, max_depth=3, random_state=1))
    fit("onnx_gb_iris", "iris", GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=1), string_labels=True)
    fit("onnx_rf_regression", "regression", RandomForestRegressor(n_estimators=40, max_depth=8, random_state=1))
    fit("onnx_gb_regression", "regression", GradientBoostingRegressor(n_estimators=80, max_depth=4, random_state=1))
    try:
        fit("onnx_rf_missing", "binary", RandomForestClassifier(n_estimators=30, max_depth=6, random_state=1), missing=True)
    except Exception as e:  # the converter may not support NaN-aware forests
        print("onnx_rf_missing skipped:", e)
    fit("onnx_large", "large", GradientBoostingClassifier(n_estimators=300, max_depth=8, min_samples_leaf=20, subsample=0.5, random_state=1))


if __name__ == "__main__":
    import sys

    data = datasets()
    which = sys.argv[1:] or ["xgboost", "lightgbm", "onnx"]
    if "xgboost" in which:
        make_xgboost(data)
    if "lightgbm" in which:
        make_lightgbm(data)
    if "onnx" in which:
        make_onnx(data)
