"""Low-level kernels: binary (XNOR-popcount) convolution."""
