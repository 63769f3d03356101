"""The local ``evaluate`` metric module for accuracy: load it with ``evaluate.load(<this folder>)``."""
