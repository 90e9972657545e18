"""Calibration of the cost model on a GPU: `python -m l4_sglang.profile --help`.

`kernels` and `job` need the `gpu` extra (torch) and a GPU; `job` also needs
SGLang. `fit` is plain numpy and runs anywhere.
"""
