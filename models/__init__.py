"""Reference model zoo: small PyTorch architectures exported to ONNX to exercise graphprune."""
