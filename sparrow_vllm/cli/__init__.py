"""The `sparrow-vllm` command: one module per command group, options from the pydantic schemas."""
