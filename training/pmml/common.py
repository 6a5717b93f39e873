"""Shared by the fixture generators: data sets and the reference rows each fixture is checked on."""
import json
import os

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
RNG = np.random.default_rng(20261201)


def iris():
    return pd.read_csv(os.path.join(HERE, "..", "iris.csv"))


def split(df, frac=0.7, seed=1):
    train = df.sample(frac=frac, random_state=seed)
    return train, df.drop(train.index)


def reference_rows(train, test, features, categorical=(), n_random=60, n_missing=30, seed=7):
    """Held-out rows, random rows up to 10% outside the training range, the training rows
    themselves (they sit on or next to split thresholds), and rows with fields blanked."""
    rng = np.random.default_rng(seed)
    rows = []
    for df in (test, train):
        rows += df[features].to_dict("records")
    for _ in range(n_random):
        row = {}
        for f in features:
            if f in categorical:
                row[f] = str(rng.choice(sorted(train[f].dropna().unique())))
            else:
                lo, hi = float(train[f].min()), float(train[f].max())
                pad = 0.1 * (hi - lo)
                row[f] = float(rng.uniform(lo - pad, hi + pad))
        rows.append(row)
    base = test[features].to_dict("records")
    for i in range(n_missing):
        row = dict(base[i % len(base)])
        for f in rng.choice(features, size=rng.integers(1, len(features)), replace=False):
            row[str(f)] = None
        rows.append(row)
    clean = []
    for row in rows:
        out = {}
        for k, v in row.items():
            if v is None or (isinstance(v, float) and np.isnan(v)):
                out[k] = None
            elif isinstance(v, (np.floating, float)):
                out[k] = float(v)
            elif isinstance(v, (np.integer, int)):
                out[k] = int(v)
            else:
                out[k] = str(v)
        clean.append(out)
    return clean


def write_rows(name, rows):
    with open(os.path.join(HERE, name + ".rows.json"), "w") as f:
        json.dump(rows, f, indent=None)  # read by make_reference.py, then folded into .expected.json
        f.write("\n")


def categorical_data(n=400, seed=3):
    """A colour (string), two measurements and a three-level label that depends on all three."""
    rng = np.random.default_rng(seed)
    colors = rng.choice(["red", "green", "blue", "amber"], size=n)
    size = rng.normal(10, 3, size=n)
    weight = rng.normal(5, 2, size=n)
    score = (colors == "red") * 2 + (colors == "amber") * 1 + (size > 11) + (weight < 4) + rng.normal(0, 0.7, size=n)
    label = np.where(score > 2, "high", np.where(score > 1, "mid", "low"))
    return pd.DataFrame({"color": colors, "size": size, "weight": weight, "label": label})
