"""mnist-cnn: the tutorial's MNIST CNN as software you can train, run on your own digits, and look inside."""

# The entry points (`mnist-cnn` / mnist_classifier.py, bench's children) put this in the environment before torch
# loads its OpenMP runtime (libgomp): let a thread that finished its share of an op spin ~3M times
# (a few ms) for the next op instead of ~300k. A training step here is ~40 small ops, and with the default the
# second core falls asleep between them. Measured, batch 64 bf16 train step, 2 threads, best of 3 x 300 steps:
# 7.4 ms default, 6.3 ms at 3M, 6.5 ms at 30M or OMP_WAIT_POLICY=ACTIVE (which spins forever: bad for `serve`).
# Set GOMP_SPINCOUNT yourself to override. Importing mnist_cnn changes nothing (a notebook keeps libgomp's default).
# `bench` runs its reference side (the tutorial's script) with libgomp's default, 300000.
GOMP_SPINCOUNT = "3000000"

__version__ = "0.1.0"
