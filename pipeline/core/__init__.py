"""The edges every layer shares: arguments and one-line errors, the params schema, every path
(layout), the typed stage outputs, atomic files, timing, provenance and MLflow tracking. Never
imports TensorFlow."""
