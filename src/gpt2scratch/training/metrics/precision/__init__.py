"""The local ``evaluate`` metric module for precision: load it with ``evaluate.load(<this folder>)``."""
