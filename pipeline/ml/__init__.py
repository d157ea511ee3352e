"""The computations: arrays and models in, arrays, models and typed results out. Imports only
`pipeline.core` from the package."""
