"""Reference predictions from JPMML-Evaluator for every fixture's rows."""
import glob
import json
import math
import os

import pandas as pd
from jpmml_evaluator import make_evaluator

from common import HERE


def jsonable(v):
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item"):
        v = v.item()
    return v


def main():
    for pmml in sorted(glob.glob(os.path.join(HERE, "*.pmml"))):
        name = os.path.basename(pmml)[: -len(".pmml")]
        rows_path = os.path.join(HERE, name + ".rows.json")
        if not os.path.exists(rows_path):
            continue
        with open(rows_path) as f:
            rows = json.load(f)
        evaluator = make_evaluator(pmml, backend="py4j").verify()
        out = []
        for row in rows:
            # One row at a time: a row the model cannot score (an invalid value, say) is an
            # error of that row only, which the tests check is refused too.
            try:
                result = evaluator.evaluate({k: v for k, v in row.items() if v is not None})
                out.append({"results": {k: jsonable(v) for k, v in result.items()}})
            except Exception as e:  # noqa: BLE001 - the message is the reference
                out.append({"error": str(e).splitlines()[0][:300]})
        with open(os.path.join(HERE, name + ".expected.json"), "w") as f:
            json.dump({"rows": rows, "expected": out}, f)
            f.write("\n")
        os.remove(rows_path)
        print(name, len(rows), "rows,", sum("error" in o for o in out), "errors")


if __name__ == "__main__":
    main()
