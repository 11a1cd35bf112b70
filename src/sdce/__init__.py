"""sdce: teacher-guided language-model pre-training, measured end to end."""

__version__ = "0.1.0"
