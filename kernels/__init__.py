"""Triton kernels (GPU; CPU only under TRITON_INTERPRET=1 for tests). One module per op."""
