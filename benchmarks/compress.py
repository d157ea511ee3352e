"""Compression targets on the pipeline's own outputs (run `dvc repro` first).

Re-measures, side by side in one process, single-image latency of each float Keras model under
tf.function and of its int8 TFLite model through LiteRT; collects accuracy and size targets
from reports/compress/<model>.json. Prints a table; writes reports/benchmarks/compress.json.

    python -m benchmarks.compress
"""

from __future__ import annotations

import json

import numpy as np

from pipeline.core.io import write_json
from pipeline.core.layout import COMPRESS_REPORTS as REPORTS
from pipeline.core.layout import COMPRESSED_DIR, MODEL_FILE, MODELS_DIR
from pipeline.core.outputs import Check
from pipeline.core.params import load_params
from pipeline.data.prepared import load_prepared
from pipeline.ml.artifacts import load_keras
from pipeline.ml.compression_report import target_checks
from pipeline.ml.inference import TFLiteModel, keras_callers, latency_stats
from tests.conftest import REPO

OUTPUT = REPO / "reports/benchmarks/compress.json"
RUNS = 500


def main() -> None:
    x, _ = load_prepared()["test"]
    rows, results = [], {}
    for name in ("fnn", "cnn", "lstm"):
        report = json.loads((REPORTS / f"{name}.json").read_text())
        model = load_keras(MODELS_DIR / name / MODEL_FILE)
        int8 = TFLiteModel((COMPRESSED_DIR / name / "int8.tflite").read_bytes(), kernels="xnnpack")
        keras_fn = latency_stats(keras_callers(model)["keras_tf_function"], x, RUNS, 64)
        tflite = latency_stats(int8.invoke, x, RUNS, 64)
        ratio = keras_fn["latency_ms_median"] / tflite["latency_ms_median"]
        params = load_params()
        checks = target_checks(report, params.compress.target_sparsity, params.targets.compress)
        bound = params.targets.compress.min_latency_ratio
        checks["latency_ratio_tf_function_to_int8"] = Check.at_least(ratio, bound, "int8")
        targets = {check: c.model_dump() for check, c in checks.items()}
        results[name] = {"keras_tf_function": keras_fn, "int8_tflite": tflite, "targets": targets}
        rows += [(name, check, c.value, c.bound, c.met) for check, c in checks.items()]
    print(f"{'model':<6} {'target':<42} {'measured':>9} {'bound':>6}  met")
    for name, check, value, bound, met in rows:
        print(f"{name:<6} {check:<42} {value:9.3f} {bound:6.1f}  {'yes' if met else 'NO'}")
    write_json(
        OUTPUT,
        {"runs": RUNS, "threads_tflite": 1, "results": results, "test_images": int(np.shape(x)[0])},
    )
    print(f"-> {OUTPUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
