"""Running models for measurement: TFLite flatbuffers through the LiteRT interpreter (as a
device would run them), a Keras model called three ways, and latency/throughput statistics."""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from pipeline.core.cli import PipelineError
from pipeline.core.reproducibility import TFLiteKernels, tflite_kernels


class TFLiteModel:
    """A TFLite flatbuffer run through the LiteRT interpreter, as a deployed model would be.

    With `kernels="xnnpack"` LiteRT hands what it can to its XNNPACK delegate; where XNNPACK
    cannot prepare a graph (LiteRT raises "failed to create XNNPACK runtime", when the interpreter
    is built or first invoked), the model runs on LiteRT's built-in kernels instead, and `kernels`
    says so. Unnamed, the kernels are the reproducibility mode's (`tflite_kernels`)."""

    def __init__(
        self, content: bytes, threads: int = 1, kernels: TFLiteKernels | None = None
    ) -> None:
        self.content, self.threads = content, threads
        self.kernels = kernels or tflite_kernels()
        self._interpreters: dict[int, Interpreter] = {}

    def interpreter(self, batch: int) -> Interpreter:
        if batch not in self._interpreters:
            try:
                self._interpreters[batch] = self._build(batch)
            except RuntimeError as error:
                if not self._fall_back(error):
                    raise
                self._interpreters[batch] = self._build(batch)
        return self._interpreters[batch]

    def _build(self, batch: int) -> Interpreter:
        resolver = (
            OpResolverType.AUTO
            if self.kernels == "xnnpack"
            else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
        interpreter = Interpreter(
            model_content=self.content,
            num_threads=self.threads,
            experimental_op_resolver_type=resolver,
        )
        index = interpreter.get_input_details()[0]["index"]
        shape = interpreter.get_input_details()[0]["shape"]
        if shape[0] != batch:
            interpreter.resize_tensor_input(index, [batch, *shape[1:]])
        interpreter.allocate_tensors()
        return interpreter

    def _fall_back(self, error: RuntimeError) -> bool:
        """After XNNPACK failed, built-in kernels for every batch size; whether it switched."""
        if self.kernels != "xnnpack" or "XNNPACK" not in str(error):
            return False
        self.kernels = "builtin"
        self._interpreters.clear()
        return True

    def _quantize_input(self, interpreter: Interpreter, x: np.ndarray) -> np.ndarray:
        detail = interpreter.get_input_details()[0]
        if detail["dtype"] == np.float32:
            return x.astype(np.float32)
        scale, zero = detail["quantization"]
        info = np.iinfo(detail["dtype"])
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])

    def _dequantize_output(self, interpreter: Interpreter, y: np.ndarray) -> np.ndarray:
        detail = interpreter.get_output_details()[0]
        if detail["dtype"] == np.float32:
            return y
        scale, zero = detail["quantization"]
        return (y.astype(np.float32) - zero) * scale

    def invoke(self, x: np.ndarray) -> np.ndarray:
        try:
            return self._invoke(x)
        except RuntimeError as error:
            if not self._fall_back(error):
                raise
            return self._invoke(x)

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        interpreter = self.interpreter(len(x))
        interpreter.set_tensor(
            interpreter.get_input_details()[0]["index"], self._quantize_input(interpreter, x)
        )
        interpreter.invoke()
        out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        return self._dequantize_output(interpreter, out)

    def predict(self, x: np.ndarray, batch: int = 64) -> np.ndarray:
        """Class scores for every image, in fixed-size batches (the last one padded)."""
        outputs = []
        for start in range(0, len(x), batch):
            chunk = x[start : start + batch]
            padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *x.shape[1:]), x.dtype)])
            outputs.append(self.invoke(padded)[: len(chunk)])
        return np.concatenate(outputs)


def latency_stats(
    call: Callable[[np.ndarray], Any], images: np.ndarray, runs: int, batch: int
) -> dict[str, float]:
    """Median and p95 milliseconds per single image, and images/s at `batch` (same process)."""
    for image in images[:5]:
        call(image[None])  # warm-up: first calls build graphs and allocate
    single = []
    for i in range(runs):
        image = images[i % len(images)][None]
        start = time.perf_counter()
        call(image)
        single.append(time.perf_counter() - start)
    batch_x = np.resize(images, (batch, *images.shape[1:]))
    call(batch_x)
    rounds, start = max(3, runs // 20), time.perf_counter()
    for _ in range(rounds):
        call(batch_x)
    elapsed = time.perf_counter() - start
    return {
        "latency_ms_median": float(np.median(single) * 1e3),
        "latency_ms_p95": float(np.percentile(single, 95) * 1e3),
        "throughput_per_s": float(rounds * batch / elapsed),
    }


def keras_callers(model: keras.Model) -> dict[str, Callable[[np.ndarray], Any]]:
    """The float Keras model called three ways: `predict`, eagerly, and under tf.function."""
    compiled = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return {
        "keras_predict": lambda x: model.predict(x, verbose=0),
        "keras_call": lambda x: model(x, training=False).numpy(),
        "keras_tf_function": lambda x: compiled(tf.constant(x)).numpy(),
    }


def sizes(content: bytes) -> dict[str, int]:
    return {"size_bytes": len(content), "size_gzip_bytes": len(gzip.compress(content, 9))}


def tensor_dtypes(content: bytes, kernels: TFLiteKernels = "xnnpack") -> dict[str, list[str]]:
    """Input, output and weight-tensor dtypes as the interpreter that runs the model reports
    them (`kernels` as TFLiteModel chose: built-in kernels list their own int32 scratch
    tensors, which XNNPACK replaces)."""
    interpreter = TFLiteModel(content, kernels=kernels).interpreter(1)

    def names(details: list[dict]) -> list[str]:
        return sorted({np.dtype(d["dtype"]).name for d in details})

    inputs = {d["index"] for d in interpreter.get_input_details()}
    outputs = {d["index"] for d in interpreter.get_output_details()}
    weights = [
        d
        for d in interpreter.get_tensor_details()
        if d["index"] not in inputs | outputs and len(d["shape"]) >= 2
    ]
    return {
        "input": names(interpreter.get_input_details()),
        "output": names(interpreter.get_output_details()),
        "weights": names(weights),
    }


def load_tflite(path: Path) -> TFLiteModel:
    """A .tflite file, checked by building its interpreter; one-line error if unusable."""
    try:
        model = TFLiteModel(Path(path).read_bytes())
    except FileNotFoundError:
        raise PipelineError(f"{path}: model file not found; run the stage that makes it") from None
    except OSError as error:
        raise PipelineError(f"{path}: cannot read ({type(error).__name__})") from None
    try:
        model.interpreter(1)
    except (ValueError, RuntimeError) as error:
        raise PipelineError(f"{path}: not a usable TFLite model ({type(error).__name__})") from None
    return model
