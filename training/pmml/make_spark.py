"""Spark ML fixtures, exported with pyspark2pmml (JPMML-SparkML)."""
import pyspark2pmml
from pyspark.ml import Pipeline
from pyspark.ml.classification import RandomForestClassifier
from pyspark.ml.feature import StringIndexer, VectorAssembler
from pyspark.sql import SparkSession
from pyspark2pmml import PMMLBuilder

from common import categorical_data, iris, reference_rows, split, write_rows

IRIS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def main():
    spark = (SparkSession.builder.master("local[1]").appName("fixtures")
             .config("spark.driver.extraClassPath", pyspark2pmml.spark_jars().replace(",", ":"))
             .config("spark.ui.enabled", "false").getOrCreate())
    df = iris()
    train, test = split(df)
    sdf = spark.createDataFrame(train)

    # The seed's shape: the label indexed outside the model, so the model's target is the
    # index (a double) and the species names are mapped back by another stage.
    indexer = StringIndexer(inputCol="species", outputCol="label").fit(sdf)
    indexed = indexer.transform(sdf).drop("species")
    model = Pipeline(stages=[
        VectorAssembler(inputCols=IRIS, outputCol="features"),
        RandomForestClassifier(labelCol="label", featuresCol="features", numTrees=20, seed=1),
    ]).fit(indexed)
    PMMLBuilder(indexed, model).buildFile("spark_rf_iris_indexed.pmml")
    write_rows("spark_rf_iris_indexed", reference_rows(train, test, IRIS))
    with open("spark_rf_iris_indexed.labels.txt", "w") as f:
        f.write("\n".join(indexer.labels) + "\n")

    # StringIndexer inside the pipeline: the model's target is the species itself.
    model = Pipeline(stages=[
        StringIndexer(inputCol="species", outputCol="label"),
        VectorAssembler(inputCols=IRIS, outputCol="features"),
        RandomForestClassifier(labelCol="label", featuresCol="features", numTrees=20, seed=1),
    ]).fit(sdf)
    PMMLBuilder(sdf, model).buildFile("spark_rf_iris.pmml")
    write_rows("spark_rf_iris", reference_rows(train, test, IRIS))

    # A categorical string feature, indexed inside the pipeline: set predicates on strings.
    cat = categorical_data()
    ctrain, ctest = split(cat)
    cdf = spark.createDataFrame(ctrain)
    model = Pipeline(stages=[
        StringIndexer(inputCol="color", outputCol="color_index"),
        StringIndexer(inputCol="label", outputCol="label_index"),
        VectorAssembler(inputCols=["color_index", "size", "weight"], outputCol="features"),
        RandomForestClassifier(labelCol="label_index", featuresCol="features", numTrees=10, maxDepth=5, seed=1),
    ]).fit(cdf)
    PMMLBuilder(cdf, model).buildFile("spark_categorical.pmml")
    write_rows("spark_categorical", reference_rows(ctrain, ctest, ["color", "size", "weight"], categorical=("color",)))
    spark.stop()


if __name__ == "__main__":
    main()
