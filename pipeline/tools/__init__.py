"""Run by people or CI outside the DAG (`python -m pipeline <tool>`): promote, sweep, generate.
Nothing imports a tool."""
