"""Runs inside the MLServer virtual environment (.venv-mlserver), never in the router's.

`train DIR`: two small sklearn classifiers on one synthetic data set, each saved as an MLServer
model directory (`DIR/a`, `DIR/b`, both named `clf`), and `DIR/data.json` with held-out inputs,
their true classes and sklearn's own accuracy of each model on the first FEEDBACK_ROWS of them.
`triton HOST:PORT`: a few tritonclient calls against the router; prints each call's exception text as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FEEDBACK_ROWS = 150


def train(out: Path) -> None:
    import joblib
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score
    from sklearn.tree import DecisionTreeClassifier

    x, y = make_classification(n_samples=1400, n_features=6, n_informative=4, n_classes=3, random_state=0)
    x_train, y_train, x_test, y_test = x[:600], y[:600], x[600:], y[600:]
    models = {"a": LogisticRegression(max_iter=500).fit(x_train, y_train),
              "b": DecisionTreeClassifier(max_depth=4, random_state=0).fit(x_train, y_train)}
    accuracy = {}
    for name, model in models.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        joblib.dump(model, folder / "model.joblib")
        (folder / "model-settings.json").write_text(json.dumps({
            "name": "clf", "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib", "version": name}}))
        rows = x_test[:FEEDBACK_ROWS]
        accuracy[name] = float(accuracy_score(y_test[:FEEDBACK_ROWS], model.predict(rows)))
    (out / "data.json").write_text(json.dumps({"x": x_test.tolist(), "y": y_test.tolist(),
                                               "feedback_rows": FEEDBACK_ROWS, "accuracy": accuracy}))


def triton(url: str) -> None:
    import numpy as np
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=url)
    results: dict[str, str] = {}

    def call(name: str, model: str, rows: int) -> None:
        data = np.zeros((rows, 6), dtype=np.float64)
        tensor = httpclient.InferInput("input-0", list(data.shape), "FP64")
        tensor.set_data_from_numpy(data, binary_data=False)
        try:
            client.infer(model, [tensor])
            results[name] = "ok"
        except Exception as exc:  # the text is what is checked
            results[name] = f"{type(exc).__name__}: {exc}"

    call("ok", "clf", 1)
    call("unrouted", "other", 1)
    call("dead", "dead", 1)
    call("too_large", "clf", 5000)
    print(json.dumps(results))


if __name__ == "__main__":
    if sys.argv[1] == "train":
        train(Path(sys.argv[2]))
    elif sys.argv[1] == "triton":
        triton(sys.argv[2])
