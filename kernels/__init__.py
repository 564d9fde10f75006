"""Triton kernels of cascade_rt, one file per op (installed as ``cascade_rt.kernels``)."""
