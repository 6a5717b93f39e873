"""The Python peer streamscore replaces: confluent-kafka + scikit-learn in the usual loop.

consume(1000, 0.1) -> json.loads -> RandomForestClassifier(100).predict_proba per batch ->
produce one JSON prediction per record -> flush -> commit. Trained on the repository's iris
data at start-up. With --copy it scores nothing and copies bytes (the client's own cost).

Prints one JSON line: records handled, seconds from the first record to the last commit,
and the CPU seconds of the whole process.
"""
import argparse
import csv
import json
import sys
import time

from confluent_kafka import Consumer, Producer

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def train(path):
    from sklearn.ensemble import RandomForestClassifier

    rows, labels = [], []
    with open(path) as f:
        for r in csv.DictReader(f):
            rows.append([float(r[k]) for k in FEATURES])
            labels.append(r["species"])
    model = RandomForestClassifier(n_estimators=100, random_state=42)
    model.fit(rows, labels)
    return model


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--brokers", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--records", type=int, required=True)
    p.add_argument("--training", default="training/iris.csv")
    p.add_argument("--copy", action="store_true", help="no model: copy the bytes through")
    p.add_argument("--ready-file", help="created once partitions are assigned (e2e runs start the load then)")
    a = p.parse_args()

    model = None if a.copy else train(a.training)
    classes = [] if model is None else [str(c) for c in model.classes_]
    consumer = Consumer({
        "bootstrap.servers": a.brokers,
        "group.id": a.group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 50,
    })
    producer = Producer({
        "bootstrap.servers": a.brokers,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
    })
    def on_assign(consumer, partitions):
        if a.ready_file and partitions:
            open(a.ready_file, "w").close()

    consumer.subscribe([a.input], on_assign=on_assign)
    done = 0
    first = None
    deadline = time.time() + 3600
    while done < a.records and time.time() < deadline:
        batch = consumer.consume(1000, 0.1)
        if not batch:
            continue
        if first is None:
            first = time.time()
        good = [m for m in batch if m.error() is None]
        if model is None:
            for m in good:
                producer.produce(a.output, m.value(), m.key())
        else:
            docs = [json.loads(m.value()) for m in good]
            probs = model.predict_proba([[d[k] for k in FEATURES] for d in docs])
            for m, d, row in zip(good, docs, probs):
                best = int(row.argmax())
                out = {
                    "id": d.get("id"),
                    "label": classes[best],
                    "probabilities": dict(zip(classes, (float(x) for x in row))),
                    "partition": m.partition(),
                    "offset": m.offset(),
                }
                while True:
                    try:
                        producer.produce(a.output, json.dumps(out).encode(), m.key())
                        break
                    except BufferError:
                        producer.poll(0.01)
        producer.flush()
        consumer.commit(asynchronous=False)
        done += len(good)
    seconds = time.time() - (first or time.time())
    consumer.close()
    # process_time counts every thread of the process, librdkafka's included.
    print(json.dumps({"records": done, "seconds": seconds, "cpu_seconds": time.process_time()}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
