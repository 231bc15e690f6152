"""What the tests share beyond fixtures: the GAP model families, the strict TensorRT and CUDA doubles, a lying
KServe v2 server, and the real tritonserver's launcher."""
