"""Django-free explanation library: tensors and arrays in, arrays and PNG bytes out.

Nothing in this package may import Django: the worker and the benchmarks use it directly.
"""
