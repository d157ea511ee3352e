"""The warm server that saves the TensorFlow stages their imports: `client` (what
`python -m pipeline` calls), `server` (its own process), `protocol` (what both share). Optional:
results are identical without it (PIPELINE_WARM=0)."""
