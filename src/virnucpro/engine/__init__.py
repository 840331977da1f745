"""The embedding runtime: streaming, packing into token budgets, overlapped GPU execution, checkpoints."""
