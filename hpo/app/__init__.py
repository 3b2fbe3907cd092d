"""The application layer: whole runs, resumes, retrains and comparisons from a typed configuration.

No click here: the CLI only turns options into a configuration and calls these functions, so a
Python user gets exactly the same behaviour.
"""
