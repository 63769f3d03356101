"""The local ``evaluate`` metric module for ROUGE-L: load it with ``evaluate.load(<this folder>)``."""
