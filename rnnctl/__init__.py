"""rnnctl: a command-line experiment runner for recurrent neural networks."""

__version__ = "0.1.0"
