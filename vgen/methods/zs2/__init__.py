"""ZS2: zero-shot video sampling from an image model (arXiv 2407.21475).

runner.py is the algorithm, attention.py its temporal momentum attention (UNet and Wan processors), config.py its
config section. Importing this package stays cheap (no torch).
"""
