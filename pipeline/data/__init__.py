"""Data in and out of the pipeline: sources, the prepared-data contract, validation with Great
Expectations. numpy, pandas and scikit-learn; never TensorFlow."""
