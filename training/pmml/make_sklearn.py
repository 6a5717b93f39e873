"""scikit-learn fixtures, exported with sklearn2pmml."""
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.datasets import load_diabetes
from sklearn.ensemble import (GradientBoostingClassifier, GradientBoostingRegressor,
                              RandomForestClassifier, RandomForestRegressor)
from sklearn.preprocessing import OneHotEncoder
from sklearn.tree import DecisionTreeClassifier
from sklearn2pmml import sklearn2pmml
from sklearn2pmml.pipeline import PMMLPipeline

from common import categorical_data, iris, reference_rows, split, write_rows

IRIS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def export(name, pipeline, train, test, features, target, categorical=(), verify=False):
    pipeline.fit(train[features], train[target])
    if verify:
        pipeline.verify(test[features].head(10))
    sklearn2pmml(pipeline, name + ".pmml")
    write_rows(name, reference_rows(train, test, features, categorical))
    print("wrote", name)


def main():
    df = iris()
    train, test = split(df)
    export("sklearn_rf_iris", PMMLPipeline([("classifier", RandomForestClassifier(n_estimators=100, random_state=1))]),
           train, test, IRIS, "species")
    export("sklearn_dt_iris", PMMLPipeline([("classifier", DecisionTreeClassifier(random_state=1))]),
           train, test, IRIS, "species", verify=True)
    export("sklearn_gbm_iris", PMMLPipeline([("classifier", GradientBoostingClassifier(n_estimators=30, random_state=1))]),
           train, test, IRIS, "species")
    binary = df[df.species != "setosa"]
    btrain, btest = split(binary)
    export("sklearn_gbm_binary", PMMLPipeline([("classifier", GradientBoostingClassifier(n_estimators=40, random_state=1))]),
           btrain, btest, IRIS, "species")

    diabetes = load_diabetes(as_frame=True).frame
    features = [c for c in diabetes.columns if c != "target"]
    dtrain, dtest = split(diabetes)
    export("sklearn_rf_regressor", PMMLPipeline([("regressor", RandomForestRegressor(n_estimators=30, max_depth=6, random_state=1))]),
           dtrain, dtest, features, "target")
    export("sklearn_gbm_regressor", PMMLPipeline([("regressor", GradientBoostingRegressor(n_estimators=50, max_depth=3, random_state=1))]),
           dtrain, dtest, features, "target")

    # A categorical string field, one-hot encoded inside the pipeline.
    cat = categorical_data()
    ctrain, ctest = split(cat)
    mapper = ColumnTransformer([("color", OneHotEncoder(), ["color"])], remainder="passthrough")
    export("sklearn_categorical", PMMLPipeline([("mapper", mapper), ("classifier", RandomForestClassifier(n_estimators=20, max_depth=5, random_state=1))]),
           ctrain, ctest, ["color", "size", "weight"], "label", categorical=("color",))

    # Trained on data with missing values: scikit-learn's trees route NaN themselves.
    holes = df.copy()
    mask = np.random.default_rng(5).random((len(holes), 4)) < 0.15
    for j, f in enumerate(IRIS):
        holes.loc[mask[:, j], f] = np.nan
    htrain, htest = split(holes)
    export("sklearn_missing", PMMLPipeline([("classifier", RandomForestClassifier(n_estimators=20, random_state=1))]),
           htrain, htest, IRIS, "species")
    # The same data with the gaps filled by an imputer: a missingValueReplacement per field.
    export("sklearn_imputed", PMMLPipeline([("imputer", SimpleImputer(strategy="median")),
                                            ("classifier", DecisionTreeClassifier(max_depth=4, random_state=1))]),
           htrain, htest, IRIS, "species")


if __name__ == "__main__":
    main()
