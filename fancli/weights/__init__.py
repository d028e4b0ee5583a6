"""What the weights actually look like (`--stats`, diff, trajectories): `stats` cuts tensors into pieces,
`moments` reduces them exactly, `parallel` and `cluster` say where they run, `tensors` and `dtypes` decode bytes."""
