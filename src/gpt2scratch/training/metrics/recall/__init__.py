"""The local ``evaluate`` metric module for recall: load it with ``evaluate.load(<this folder>)``."""
