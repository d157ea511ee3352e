"""One module per DVC stage (`python -m pipeline <stage>`): a thin `main()` that loads, computes
through `ml` or `data`, writes and logs. Nothing imports a stage."""
