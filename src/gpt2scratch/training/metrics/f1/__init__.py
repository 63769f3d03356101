"""The local ``evaluate`` metric module for f1: load it with ``evaluate.load(<this folder>)``."""
