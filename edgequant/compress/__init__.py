"""Quantization: schemes, RTN, GPTQ, the sequential driver, the quantized-checkpoint format."""
