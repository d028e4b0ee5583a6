"""Models held against something: `check` (the init against a committed baseline, `check_result` its verdict),
`diff` (checkpoint A against B, tensor by tensor) and `trajectory` (a run's checkpoints side by side)."""
